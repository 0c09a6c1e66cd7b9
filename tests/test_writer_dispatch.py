"""The writer's Arrow conversion goes through Dask's dispatch (cuDF partitions: ``to_arrow``);
pandas partitions write exactly what ``pa.Table.from_pandas`` wrote before (issue 19, item 3)."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.dataframe.dispatch import to_pyarrow_table_dispatch

from dask_clip.backends.kinds import EMBEDDING_DTYPE, ERROR_DTYPE
from dask_clip.io import writer


def _frame(named: bool) -> pd.DataFrame:
    emb = pa.array([[0.5, 1.0], None, [2.0, 3.0]], pa.list_(pa.float32()))
    df = pd.DataFrame(
        {
            "key": ["a", "b", "c"],
            "embedding": pd.Series(pd.arrays.ArrowExtensionArray(emb), dtype=EMBEDDING_DTYPE),
            "error": pd.Series([None, "bad", None], dtype=ERROR_DTYPE),
            "nothing": [None, None, None],
        }
    )
    if named:
        df.index = pd.Index(np.arange(3) + 10, name="row")
    return df


def _old_to_arrow(df: pd.DataFrame, types: dict) -> pa.Table:
    """What writer.to_arrow computed before it went through the dispatch."""
    named = any(name is not None for name in df.index.names)
    table = pa.Table.from_pandas(df, preserve_index=True if named else None)
    schema = table.schema
    for i, field in enumerate(schema):
        target = types.get(field.name) or (pa.string() if pa.types.is_null(field.type) else None)
        if target is not None and target != field.type:
            schema = schema.set(i, field.with_type(target))
    table = table.cast(schema) if schema != table.schema else table
    return table.replace_schema_metadata(writer._fix_pandas_metadata(table.schema).metadata)


def test_pandas_partitions_convert_as_before(tmp_path):
    for named in (False, True):
        df = _frame(named)
        types = writer.arrow_types(df)
        assert types == {
            str(name): pa.Schema.from_pandas(df[[name]], preserve_index=False).field(str(name)).type
            for name, dtype in df.dtypes.items()
            if not pd.api.types.is_object_dtype(dtype)
        }
        assert {"embedding", "error"} <= set(types)
        new, old = writer.to_arrow(df, types), _old_to_arrow(df, types)
        assert new.equals(old, check_metadata=True)
        pq.write_table(new, tmp_path / "new.parquet")
        pq.write_table(old, tmp_path / "old.parquet")
        assert (tmp_path / "new.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()


def test_write_parquet_reads_back_through_the_dispatch(tmp_path):
    ddf = dd.from_pandas(_frame(False), npartitions=2)
    summary = writer.write_parquet(ddf, tmp_path / "out")
    assert summary.rows == 3
    back = pd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")
    assert list(back["embedding"].tolist()[0]) == [0.5, 1.0] and back["error"].tolist()[1] == "bad"


def test_the_writer_uses_dasks_dispatch_for_other_frame_types():
    """A partition type registered on Dask's dispatch (as dask_cudf registers cuDF) is converted
    by its own implementation, never by pa.Table.from_pandas."""

    class DeviceFrame(pd.DataFrame):  # a stand-in for a frame library with its own to_arrow
        @property
        def _constructor(self):
            return DeviceFrame

    calls = []

    @to_pyarrow_table_dispatch.register(DeviceFrame)
    def _device_to_arrow(obj, preserve_index=None, **kwargs):
        calls.append(preserve_index)
        return pa.Table.from_pandas(pd.DataFrame(obj), preserve_index=preserve_index)

    table = writer.to_arrow(DeviceFrame(_frame(True)), {})
    assert calls == [True] and table.column_names[-1] == "row"
