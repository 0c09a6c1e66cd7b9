"""Parquet tables of images (img2dataset's output: image bytes in ``jpg``, plus ``key``,
``caption`` ...), read with ``dask.dataframe.read_parquet`` from an explicit, sorted file list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import InputFormat, Listing, ReadRequest, is_parquet

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["FORMAT"]


def claims(request: ReadRequest, listing: Listing) -> bool:
    return any(is_parquet(f) for f in listing.files)


def read(request: ReadRequest, listing: Listing) -> tuple[dd.DataFrame, str]:
    import dask.dataframe as dd

    from ..read import guess_image_column

    parquet = [f for f in listing.files if is_parquet(f)]
    if not parquet:
        raise FileNotFoundError(f"{request.path!r} holds no Parquet files")
    # An explicit, sorted file list: folders and globs give the same partitions.
    ddf = dd.read_parquet(
        [listing.url(f) for f in parquet],
        dtype_backend="pyarrow",
        split_row_groups=request.split_row_groups,
        storage_options=request.storage_options,
    )
    return ddf, request.image_column or guess_image_column(list(ddf.columns), dict(ddf.dtypes))


FORMAT = InputFormat(name="parquet", priority=10, claims=claims, read=read)
