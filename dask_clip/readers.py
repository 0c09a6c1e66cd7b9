"""Reading image inputs as Dask DataFrames: Parquet tables of images, or folders of image files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from .fetch import DEFAULT_MAX_IMAGE_BYTES
from .validation import check_choice
from .webdataset import is_webdataset_input, read_webdataset

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["IMAGE_COLUMN_CANDIDATES", "IMAGE_EXTENSIONS", "INPUT_FORMATS", "guess_image_column", "read_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# img2dataset writes the encoded image to a column named after its format.
IMAGE_COLUMN_CANDIDATES = ("jpg", "image", "png", "webp", "jpeg", "img")
PATH_COLUMN = "path"
INPUT_FORMATS = ("auto", "parquet", "webdataset", "images")


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".parq", ".pq"))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(path: str, root: str) -> bool:
    """Files under a ``.``/``_``-prefixed folder or name (pyarrow's and Spark's convention)."""
    rel = os.path.relpath(path, root) if root else path
    return any(part.startswith((".", "_")) for part in rel.replace("\\", "/").split("/"))


def _url(fs: Any, path: str) -> str:
    """A path as the user would write it: plain for local files, ``proto://...`` otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def guess_image_column(columns: list[str], dtypes: dict[str, Any]) -> str:
    """The image column of an input table: an img2dataset name, else its one binary column.

    Raises
    ------
    ValueError
        No candidate (the message lists the columns).
    """
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in columns:
            return name
    binary = [
        c
        for c in columns
        if (isinstance(dtypes[c], pd.ArrowDtype) and pa.types.is_binary(dtypes[c].pyarrow_dtype))
        or (isinstance(dtypes[c], pd.ArrowDtype) and pa.types.is_large_binary(dtypes[c].pyarrow_dtype))
    ]
    if len(binary) == 1:
        return binary[0]
    if PATH_COLUMN in columns:
        return PATH_COLUMN
    raise ValueError(f"cannot tell which column holds the images among {columns}; pass image_column= (--image-column)")


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


def read_images(
    path: str | os.PathLike,
    *,
    image_column: str | None = None,
    partition_size: int = 256,
    split_row_groups: bool | str = "infer",
    storage_options: dict | None = None,
    input_format: str = "auto",
    split_shards: int | str | None = None,
    max_member_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> tuple[dd.DataFrame, str]:
    """Open an image input lazily: a Parquet table of images, WebDataset tar shards, or image files.

    Parameters
    ----------
    path
        A Parquet file, folder or glob (img2dataset's output: image bytes in ``jpg``, plus
        ``key``, ``caption`` ...), or a folder or glob of image files; local or an fsspec URL
        (``s3://...``). Files and folders whose names start with ``.`` or ``_`` are skipped.
    image_column
        The image column of a Parquet input; default: ``jpg``/``image``/... or its only binary
        column. Image files give a ``path`` column.
    partition_size
        Image files per partition, for a folder of images.
    split_row_groups
        Passed to ``dask.dataframe.read_parquet``: ``True`` makes a partition per row group.
    storage_options
        fsspec options for remote paths.
    input_format
        ``"auto"`` (tar shards when the path names ``.tar`` files, else Parquet, else image
        files), ``"parquet"``, ``"webdataset"`` (:func:`~dask_clip.webdataset.read_webdataset`,
        one partition per shard, image bytes in ``image``) or ``"images"``.
    split_shards
        WebDataset input: bytes of tar per partition (default: one partition per shard).
    max_member_bytes
        WebDataset input: a larger member is skipped unread, its row's ``read_error`` says so
        (the embedder's ``max_image_bytes``).

    Returns
    -------
    ddf : dask.dataframe.DataFrame
        Arrow-backed columns (images as ``binary``: Dask cannot write object columns of bytes).
        A frame of image files has one ``path`` column (``string[pyarrow]``), sorted by path.
    image_column : str
        The column holding the images.
    """
    import dask.dataframe as dd

    if not isinstance(partition_size, int) or partition_size < 1:
        raise ValueError(f"partition_size must be a positive int, got {partition_size!r}")
    check_choice("input_format", input_format, INPUT_FORMATS)
    if input_format == "webdataset" or (input_format == "auto" and is_webdataset_input(path, storage_options)):
        column = image_column or "image"
        shards = read_webdataset(
            path,
            image_column=column,
            split_shards=split_shards,
            storage_options=storage_options,
            max_member_bytes=max_member_bytes,
        )
        return shards, column
    fs, files = _list_files(os.fspath(path), storage_options)
    if input_format == "images":
        files = [f for f in files if not _is_parquet(f)]
    elif input_format == "parquet" and not any(_is_parquet(f) for f in files):
        raise FileNotFoundError(f"{os.fspath(path)!r} holds no Parquet files")
    parquet = [f for f in files if _is_parquet(f)]
    images = [f for f in files if _is_image(f)]
    if parquet:
        # An explicit, sorted file list: folders and globs give the same partitions.
        ddf = dd.read_parquet(
            [_url(fs, f) for f in parquet],
            dtype_backend="pyarrow",
            split_row_groups=split_row_groups,
            storage_options=storage_options,
        )
        column = image_column or guess_image_column(list(ddf.columns), dict(ddf.dtypes))
        return ddf, column
    if not images:
        raise FileNotFoundError(
            f"{os.fspath(path)!r} holds neither Parquet files nor images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if image_column not in (None, PATH_COLUMN):
        raise ValueError(f"a folder of images gives a {PATH_COLUMN!r} column, not {image_column!r}")
    urls = [_url(fs, f) for f in images]
    frame = pd.DataFrame({PATH_COLUMN: pd.array(urls, dtype=pd.ArrowDtype(pa.string()))})
    return dd.from_pandas(frame, chunksize=partition_size, sort=False), PATH_COLUMN
