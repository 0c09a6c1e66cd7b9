"""The dispatch functions of the dataframe boundary, declared (implementations register on them).

Each is a :class:`dask.utils.Dispatch` on the type of its first argument; see
:mod:`dask_clip.backends` for what each one does and where the implementations live.
"""

from __future__ import annotations

from typing import Any

from dask.utils import Dispatch


def _dispatch(name: str) -> Dispatch:
    dispatch = Dispatch(name)

    @dispatch.register(object)
    def _unsupported(obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{name}: expected a pandas or cuDF DataFrame, Series or Index, got {type(obj).__name__}")

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
on_device = _dispatch("on_device")
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
pack_floats = _dispatch("pack_floats")
