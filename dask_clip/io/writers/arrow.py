"""A partition as an Arrow table with the output's column types and readable pandas metadata
(on the workers, for every output format)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from ..file_metadata import with_file_metadata

__all__ = ["arrow_types", "to_arrow"]


def _fix_pandas_metadata(schema: pa.Schema) -> pa.Schema:
    """Mark columns whose stored pandas dtype pandas cannot parse back as ``object``."""
    raw = (schema.metadata or {}).get(b"pandas")
    if raw is None:
        return schema
    meta = json.loads(raw)
    changed = False
    for column in meta.get("columns", []):
        try:
            pd.api.types.pandas_dtype(column["numpy_type"])
        except (TypeError, ValueError):  # e.g. "list<item: float>[pyarrow]" (pandas#57411)
            column["numpy_type"] = "object"
            changed = True
    if not changed:
        return schema
    return schema.with_metadata({**schema.metadata, b"pandas": json.dumps(meta).encode()})


def _dask_dispatch() -> tuple[Any, Any]:
    """Dask's own pandas/cuDF -> Arrow dispatch functions (cuDF's registered by dask_cudf).

    cuDF refuses ``pa.Table.from_pandas`` (no implicit device-to-host conversion); through
    these, a cuDF partition goes through ``cudf.DataFrame.to_arrow`` and a pandas one through
    ``pa.Table.from_pandas``, as before.
    """
    from dask.dataframe.dispatch import pyarrow_schema_dispatch, to_pyarrow_table_dispatch

    # dask registers dask_cudf lazily for to_pyarrow_table_dispatch, not for this one
    pyarrow_schema_dispatch.register_lazy("cudf", _register_dask_cudf)
    return pyarrow_schema_dispatch, to_pyarrow_table_dispatch


def _register_dask_cudf() -> None:
    import dask_cudf  # noqa: F401 - registers cuDF's implementations on dask's dispatch functions


def arrow_types(meta: Any) -> dict[str, pa.DataType]:
    """Arrow types of the columns whose dtype says it (object columns are inferred per file)."""
    schema_of, _ = _dask_dispatch()
    types: dict[str, pa.DataType] = {}
    for name, dtype in meta.dtypes.items():
        if pd.api.types.is_object_dtype(dtype):
            continue
        types[str(name)] = schema_of(meta[[name]], preserve_index=False).field(str(name)).type
    return types


def to_arrow(
    df: Any,
    types: Mapping[str, pa.DataType] | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> pa.Table:
    """A partition as an Arrow table with the output's column types and readable pandas metadata.

    Parameters
    ----------
    df
        A pandas or cuDF partition (Dask's ``to_pyarrow_table_dispatch``: one device-to-host
        copy for cuDF).
    types
        Column types from the frame's meta (:func:`arrow_types`), so every file has the same
        schema; other columns are inferred, all-null ones as ``string``.
    file_metadata
        What the job records in each file's ``dask_clip`` metadata entry (image and key
        columns: :mod:`dask_clip.io.file_metadata`).
    """
    # A named index is data (e.g. dedup's `row` numbers): store it as a column. An unnamed
    # RangeIndex stays metadata only; Dask's reader cannot handle a named one stored that way.
    named = any(name is not None for name in df.index.names)
    table = _dask_dispatch()[1](df, preserve_index=True if named else None)
    schema = table.schema
    for i, field in enumerate(schema):
        target = (types or {}).get(field.name)
        if target is None and pa.types.is_null(field.type):
            target = pa.string()
        if target is not None and target != field.type:
            schema = schema.set(i, field.with_type(target))
    if schema != table.schema:
        table = table.cast(schema)
    metadata = _fix_pandas_metadata(table.schema).metadata
    if file_metadata:
        metadata = with_file_metadata(metadata, file_metadata)
    return table.replace_schema_metadata(metadata)
