"""What every input format shares: the read request, the file listing, the format record.

Light: no Dask, torch or pyarrow import at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..fetch import DEFAULT_MAX_IMAGE_BYTES

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["IMAGE_EXTENSIONS", "PATH_COLUMN", "InputFormat", "Listing", "ReadRequest"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PATH_COLUMN = "path"


@dataclass(frozen=True)
class ReadRequest:
    """One input, as :func:`dask_clip.io.read.read_images` was asked to read it.

    Attributes
    ----------
    path : str
        A file, folder, glob or fsspec URL (``s3://...``).
    image_column : str or None
        The image column the user named; None to guess.
    partition_size : int
        Image files per partition (a folder of images).
    split_row_groups : bool or str
        ``dask.dataframe.read_parquet``'s option.
    storage_options : dict
        fsspec options for remote paths.
    split_shards : int, str or None
        Bytes of tar per partition (WebDataset); None: one partition per shard.
    max_member_bytes : int or None
        A larger tar member is skipped unread (WebDataset).
    """

    path: str
    image_column: str | None = None
    partition_size: int = 256
    split_row_groups: bool | str = "infer"
    storage_options: dict | None = None
    split_shards: int | str | None = None
    max_member_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES


@dataclass
class Listing:
    """The files a request's path names, listed once, on first use, for every format that asks."""

    request: ReadRequest
    _listed: tuple[Any, list[str]] | None = field(default=None, repr=False)

    def _list(self) -> tuple[Any, list[str]]:
        if self._listed is None:
            self._listed = _list_files(self.request.path, self.request.storage_options)
        return self._listed

    @property
    def fs(self) -> Any:
        """The fsspec filesystem."""
        return self._list()[0]

    @property
    def files(self) -> list[str]:
        """The sorted files (hidden ones skipped)."""
        return self._list()[1]

    def url(self, path: str) -> str:
        """A path as the user would write it: plain for local files, ``proto://...`` otherwise."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else self.fs.unstrip_protocol(path)


@dataclass(frozen=True)
class InputFormat:
    """One input format: a module of :mod:`dask_clip.io.readers` that defines ``FORMAT``.

    Attributes
    ----------
    name : str
        Its ``input_format`` / ``--input-format`` value.
    priority : int
        ``input_format="auto"`` asks the formats in increasing priority; the first that claims
        the path reads it.
    claims : (ReadRequest, Listing) -> bool
        Whether the path holds this format (for ``"auto"``).
    read : (ReadRequest, Listing) -> (dask.dataframe.DataFrame, str)
        The lazy frame and its image column; raises ``FileNotFoundError`` when the path holds
        none of this format.
    fingerprint : (ReadRequest) -> dict
        What, beyond the path and options, defines the input for resuming (e.g. the shard list).
    """

    name: str
    priority: int
    claims: Callable[[ReadRequest, Listing], bool]
    read: Callable[[ReadRequest, Listing], tuple[dd.DataFrame, str]]
    fingerprint: Callable[[ReadRequest], dict[str, Any]] = lambda request: {}


def _hidden(path: str, root: str) -> bool:
    """Files under a ``.``/``_``-prefixed folder or name (pyarrow's and Spark's convention)."""
    rel = os.path.relpath(path, root) if root else path
    return any(part.startswith((".", "_")) for part in rel.replace("\\", "/").split("/"))


def _list_files(path: str, storage_options: dict | None) -> tuple[Any, list[str]]:
    """The filesystem and the sorted files that ``path`` (file, folder or glob) names."""
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=storage_options or {})
    if not paths:
        raise FileNotFoundError(f"{path!r} matches no file")
    files: list[str] = []
    for p in paths:
        if fs.isdir(p):
            files.extend(f for f in fs.find(p) if not _hidden(f, p))
        else:
            files.append(p)
    return fs, sorted(files)


def is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".parq", ".pq"))


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def no_input(request: ReadRequest) -> FileNotFoundError:
    """The error for a path that holds nothing a file format reads."""
    return FileNotFoundError(f"{request.path!r} holds neither Parquet files nor images ({', '.join(IMAGE_EXTENSIONS)})")
