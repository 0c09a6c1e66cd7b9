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
Columns out
    ``output_column(like, kind, values, valid)``   a column of a kind in :mod:`dask_clip.columns`
    ``empty_column(meta, kind)``                   its empty version, for ``meta``
    ``embedding_matrix(series, device)``           an embedding column read back as (m, d) + valid
Frames (used by the dedup steps)
    ``new_column``, ``new_frame``, ``with_columns``, ``take``, ``take_rows``, ``numeric_tensor``,
    ``nullable``, ``local_positions``, ``arange_index``, ``content_hashes``, ``pack_rows``
"""

from __future__ import annotations

from typing import Any

from dask.utils import Dispatch

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
    "output_column",
    "pack_rows",
    "sample_values",
    "string_rows",
    "take",
    "take_rows",
    "with_columns",
]


def _dispatch(name: str) -> Dispatch:
    dispatch = Dispatch(name)

    @dispatch.register(object)
    def _unsupported(obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{name}: expected a pandas or cuDF DataFrame, Series or Index, got {type(obj).__name__}")

    @dispatch.register_lazy("pandas")
    def _register_pandas() -> None:
        from . import pandas_backend  # noqa: F401 - registers on import

    @dispatch.register_lazy("cudf")
    def _register_cudf() -> None:
        from . import cudf_backend  # noqa: F401 - registers on import

    return dispatch


column_type = _dispatch("column_type")
binary_as_string = _dispatch("binary_as_string")
sample_values = _dispatch("sample_values")
byte_rows = _dispatch("byte_rows")
string_rows = _dispatch("string_rows")
object_rows = _dispatch("object_rows")
flat_uint8_rows = _dispatch("flat_uint8_rows")
host_floats = _dispatch("host_floats")
as_binary = _dispatch("as_binary")
output_column = _dispatch("output_column")
empty_column = _dispatch("empty_column")
embedding_matrix = _dispatch("embedding_matrix")
new_column = _dispatch("new_column")
new_frame = _dispatch("new_frame")
with_columns = _dispatch("with_columns")
take = _dispatch("take")
take_rows = _dispatch("take_rows")
numeric_tensor = _dispatch("numeric_tensor")
nullable = _dispatch("nullable")
local_positions = _dispatch("local_positions")
arange_index = _dispatch("arange_index")
content_hashes = _dispatch("content_hashes")
pack_rows = _dispatch("pack_rows")
