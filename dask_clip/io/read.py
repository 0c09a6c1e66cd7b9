"""Reading image inputs as Dask DataFrames: Parquet tables of images, WebDataset shards, or
folders of image files — each an input format of :mod:`dask_clip.io.readers`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ..validation import check_choice
from .fetch import DEFAULT_MAX_IMAGE_BYTES
from .readers.base import IMAGE_EXTENSIONS, PATH_COLUMN, ReadRequest

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "IMAGE_COLUMN_CANDIDATES",
    "IMAGE_EXTENSIONS",
    "PATH_COLUMN",
    "guess_image_column",
    "input_format_names",
    "input_request",
    "read_images",
]

# img2dataset writes the encoded image to a column named after its format.
IMAGE_COLUMN_CANDIDATES = ("jpg", "image", "png", "webp", "jpeg", "img")


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
        files), ``"parquet"``, ``"webdataset"`` (:func:`~dask_clip.io.webdataset.read_webdataset`,
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
    from . import readers

    if not isinstance(partition_size, int) or partition_size < 1:
        raise ValueError(f"partition_size must be a positive int, got {partition_size!r}")
    check_choice("input_format", input_format, input_format_names())
    return readers.read(
        input_request(
            path, image_column, partition_size, split_row_groups, storage_options, split_shards, max_member_bytes
        ),
        input_format,
    )


def input_request(
    path: str | os.PathLike,
    image_column: str | None = None,
    partition_size: int = 256,
    split_row_groups: bool | str = "infer",
    storage_options: dict | None = None,
    split_shards: int | str | None = None,
    max_member_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> ReadRequest:
    """:func:`read_images`'s arguments as one :class:`~dask_clip.io.readers.base.ReadRequest`."""
    return ReadRequest(
        os.fspath(path),
        image_column=image_column,
        partition_size=partition_size,
        split_row_groups=split_row_groups,
        storage_options=storage_options,
        split_shards=split_shards,
        max_member_bytes=max_member_bytes,
    )


def input_format_names() -> tuple[str, ...]:
    """``"auto"`` and the registered input formats, in the order ``"auto"`` tries them
    (:mod:`dask_clip.io.readers`): the ``input_format`` choices and the CLI's ``--input-format``."""
    from .readers import input_formats

    return ("auto", *(fmt.name for fmt in input_formats()))


def __getattr__(name: str) -> Any:
    if name == "INPUT_FORMATS":  # the former constant, from the registry on first use (no scan at import)
        return input_format_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
