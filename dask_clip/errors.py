"""Exceptions raised by dask_clip.

::

    DaskClipError                 base of everything below
    ├── ModelLoadError            weights missing, unreadable or not downloadable
    └── ImageDecodeError          one row failed and ``on_error="raise"`` was asked for

Configuration mistakes found on the client (unknown architecture, bad precision, missing
column) are plain ``ValueError``/``TypeError``/``FileNotFoundError``, raised before any
task graph is built.
"""

from __future__ import annotations

__all__ = ["DaskClipError", "ImageDecodeError", "ModelLoadError"]


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
