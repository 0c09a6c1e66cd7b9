"""A lock shared by the processes of one machine, around model downloads.

Several worker processes of a node (one per GPU under dask-cuda) ask for the same weights at
once. huggingface_hub locks its own blobs, but open_clip writes URL downloads (OpenAI's
weights) straight to their final path, so two processes can each write, or read half of, the
same file. A file lock per download (``filelock``, the lock huggingface_hub uses, like
distributed's ``PipInstall`` plugin locks its install per node) lets one process download and
the others wait, then find the file in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["node_lock"]


@contextlib.contextmanager
def node_lock(key: str, folder: str | None = None) -> Iterator[Path]:
    """Hold the machine-wide lock named by ``key`` while the block runs.

    Parameters
    ----------
    key
        What is being fetched (e.g. ``"ViT-B-32/openai"``); hashed into the lock file's name.
    folder
        Where the lock file lives: the download cache when one is configured (shared with
        every process that writes there), else the system's temporary folder.

    Yields
    ------
    pathlib.Path
        The lock file.
    """
    from filelock import FileLock

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = Path(folder).expanduser() if folder else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    path = base / f".dask-clip-{digest}.lock"
    with FileLock(str(path)):
        yield path
