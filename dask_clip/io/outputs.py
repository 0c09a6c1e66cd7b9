"""Read any dask_clip output back as a Dask DataFrame: Parquet, the LAION layout, or Lance.

``index``, ``dedup`` and ``filter`` read their input through :func:`read_output`, so each takes
what ``dask-clip embed --output-format`` wrote. The format is told by the folder's manifest
(``_dask_clip.json``), else by its layout (``img_emb/`` + ``metadata/`` as clip-retrieval
writes it; ``_versions/`` of a Lance dataset); anything else is read as Parquet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .layout import output_format

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["output_format", "read_output"]


def read_output(path: Any, storage_options: dict | None = None) -> dd.DataFrame:
    """An embedding output (or any Parquet input) as a Dask DataFrame with Arrow dtypes.

    Embeddings are ``list<float32>`` whatever the format: the LAION layout's ``.npy`` rows
    (float16 widened exactly) and Lance's ``fixed_size_list`` come back as Parquet's do.

    Raises
    ------
    ValueError
        A LAION-layout folder that an interrupted run left incomplete (rerun ``dask-clip embed``
        to finish it).
    ImportError
        A Lance dataset without pylance installed (the message says how to install it).
    """
    import dask.dataframe as dd

    fmt = output_format(path, storage_options)
    if fmt == "laion":
        from .writers.laion import read_laion

        return read_laion(path, storage_options)
    if fmt == "lance":
        from .writers.lance import read_lance

        if storage_options:
            raise ValueError("Lance datasets are read with Lance's own storage settings; pass no storage_options")
        return read_lance(path)
    return dd.read_parquet(path, dtype_backend="pyarrow", storage_options=storage_options)
