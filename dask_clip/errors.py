"""Exceptions raised by dask_clip.

::

    DaskClipError                 base of everything below
    ├── ModelLoadError            weights missing, unreadable or not downloadable
    ├── ImageDecodeError          one row failed and ``on_error="raise"`` was asked for
    └── NoWorkersError            the cluster has had no worker for too long (``--worker-timeout``)

Configuration mistakes found on the client (unknown architecture, bad precision, missing
column) are plain ``ValueError``/``TypeError``/``FileNotFoundError``, raised before any
task graph is built.
"""

from __future__ import annotations

__all__ = ["DaskClipError", "ImageDecodeError", "ModelLoadError", "NoWorkersError"]


class DaskClipError(Exception):
    """Base class of dask_clip's own exceptions."""


class ModelLoadError(DaskClipError):
    """The model or its weights could not be loaded."""


class ImageDecodeError(DaskClipError):
    """An image could not be read or decoded, and ``on_error="raise"`` was set.

    Parameters
    ----------
    index
        The row's index label in the partition.
    reason
        The short reason that the error column would have held.
    """

    def __init__(self, index: object, reason: str) -> None:
        super().__init__(f"row {index!r}: {reason}")
        self.index = index
        self.reason = reason


class NoWorkersError(DaskClipError):
    """The cluster has had no worker for ``timeout`` seconds while a job waited on it.

    Parameters
    ----------
    timeout
        The seconds waited (``worker_timeout``, ``--worker-timeout``).
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"no worker alive for {timeout:.0f} s (all workers died or none joined; --worker-timeout). "
            "Finished part files are kept: restart the workers, or the job, and run the same command "
            "again to resume"
        )
        self.timeout = timeout

    def __reduce__(self) -> tuple[type, tuple[float]]:
        return (type(self), (self.timeout,))
