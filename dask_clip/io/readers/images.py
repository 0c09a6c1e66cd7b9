"""Folders (or globs) of image files: one ``path`` column (``string[pyarrow]``), sorted by path,
``partition_size`` files per partition; the embedder reads each file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import PATH_COLUMN, InputFormat, Listing, ReadRequest, is_image, no_input

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["FORMAT"]


def claims(request: ReadRequest, listing: Listing) -> bool:
    return any(is_image(f) for f in listing.files)


def read(request: ReadRequest, listing: Listing) -> tuple[dd.DataFrame, str]:
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    images = [f for f in listing.files if is_image(f)]
    if not images:
        raise no_input(request)
    if request.image_column not in (None, PATH_COLUMN):
        raise ValueError(f"a folder of images gives a {PATH_COLUMN!r} column, not {request.image_column!r}")
    urls = [listing.url(f) for f in images]
    frame = pd.DataFrame({PATH_COLUMN: pd.array(urls, dtype=pd.ArrowDtype(pa.string()))})
    return dd.from_pandas(frame, chunksize=request.partition_size, sort=False), PATH_COLUMN


FORMAT = InputFormat(name="images", priority=20, claims=claims, read=read)
