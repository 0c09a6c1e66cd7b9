"""The dataframe boundary: every question that depends on pandas vs cuDF is asked here.

Each function below is a :class:`dask.utils.Dispatch` on the type of its first argument, the
pattern of ``dask/dataframe/dispatch.py`` and ``dask_cudf/backends.py``: the pandas/Arrow
implementations live in :mod:`.pandas_backend`, the cuDF ones in :mod:`.cudf_backend`, and both
register lazily, on first use of a pandas or cuDF object (``register_lazy``), so importing
dask_clip imports neither torch nor cuDF. The rest of the package sees Python rows, NumPy arrays
and torch tensors only.

Image columns in
    ``column_type(series)``           the Arrow type the column stores (None: look at values)
    ``binary_as_string(obj)``         True where binary data is stored as strings (cuDF)
    ``sample_values(series, n)``      up to n non-null values as Python objects
    ``byte_rows(series)``             one bytes-like per row (zero-copy views where possible)
    ``string_rows(series)``           one str per row
    ``object_rows(series)``           one Python object per row (arrays in object columns)
    ``flat_uint8_rows(series)``       a flat ``list<uint8>`` column as (flat tensor, offsets, valid)
    ``host_floats(series)``           float64 NumPy values, NaN for nulls
    ``as_binary(series)``             an object column of bytes as the backend's binary type
    ``on_device(obj)``                True where columns live in GPU memory (cuDF)
Columns out
    ``output_column(like, kind, values, valid)``   a column of a kind in :mod:`dask_clip.columns`
    ``empty_column(meta, kind)``                   its empty version, for ``meta``
    ``embedding_matrix(series, device)``           an embedding column read back as (m, d) + valid
Frames (used by the dedup steps)
    ``new_column``, ``new_frame``, ``with_columns``, ``take``, ``take_rows``, ``numeric_tensor``,
    ``nullable``, ``local_positions``, ``arange_index``, ``content_hashes``, ``pack_rows``,
    ``pack_floats``
"""

from __future__ import annotations

from dask.utils import Dispatch

from . import dispatch
from .dispatch import (
    arange_index,
    as_binary,
    binary_as_string,
    byte_rows,
    column_type,
    content_hashes,
    embedding_matrix,
    empty_column,
    flat_uint8_rows,
    host_floats,
    local_positions,
    new_column,
    new_frame,
    nullable,
    numeric_tensor,
    object_rows,
    on_device,
    output_column,
    pack_floats,
    pack_rows,
    sample_values,
    string_rows,
    take,
    take_rows,
    with_columns,
)

__all__ = [
    "arange_index",
    "as_binary",
    "binary_as_string",
    "byte_rows",
    "column_type",
    "content_hashes",
    "embedding_matrix",
    "empty_column",
    "flat_uint8_rows",
    "host_floats",
    "local_positions",
    "new_column",
    "new_frame",
    "nullable",
    "numeric_tensor",
    "object_rows",
    "on_device",
    "output_column",
    "pack_floats",
    "pack_rows",
    "sample_values",
    "string_rows",
    "take",
    "take_rows",
    "with_columns",
]


def _register_pandas() -> None:
    from . import pandas_backend  # noqa: F401 - registers on import


def _register_cudf() -> None:
    from . import cudf_backend  # noqa: F401 - registers on import


for _function in vars(dispatch).values():  # every function declared there
    if isinstance(_function, Dispatch):
        _function.register_lazy("pandas", _register_pandas)
        _function.register_lazy("cudf", _register_cudf)
