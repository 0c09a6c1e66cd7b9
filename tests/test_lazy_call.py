"""``embedder(ddf)`` reads nothing for typed image columns, nor for object columns read from
Parquet (the schema says): the input file can vanish between the call and the compute, and only
the compute fails."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip import ImageEmbedder
from dask_clip.io.parquet_schema import parquet_column_type
from dask_clip.testing import solid_png


@pytest.mark.parametrize("column", ["bytes", "paths"])
def test_the_call_reads_no_data(tmp_path, model_dir, column):
    png = tmp_path / "a.png"
    png.write_bytes(solid_png(8, 8))
    values = [png.read_bytes()] * 4 if column == "bytes" else [str(png)] * 4
    dtype = pd.ArrowDtype(pa.binary() if column == "bytes" else pa.string())
    path = tmp_path / "in.parquet"
    pd.DataFrame({"image": pd.Series(values, dtype=dtype)}).to_parquet(path)
    ddf = dd.read_parquet(path, dtype_backend="pyarrow")
    path.unlink()  # anything that reads from here on fails
    out = ImageEmbedder(model_dir=model_dir)(ddf)
    assert list(out.columns) == ["image", "embedding", "embedding_error"]
    with pytest.raises(FileNotFoundError):
        out.compute(scheduler="sync")


def _plain_binary_parquet(tmp_path, values):
    """A Parquet file written by pyarrow without pandas metadata (as img2dataset writes its
    ``jpg`` column): ``dd.read_parquet`` gives an ``object`` column for it."""
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"jpg": pa.array(values, pa.binary()), "n": list(range(len(values)))}), path)
    return path


@pytest.mark.parametrize(
    "select",
    [
        lambda ddf: ddf,
        lambda ddf: ddf[["jpg"]],
        lambda ddf: ddf[ddf.n >= 0],
        lambda ddf: ddf.partitions[0],
        lambda ddf: ddf.repartition(npartitions=1),
    ],
    ids=["read", "columns", "filter", "partitions", "repartition"],
)
def test_an_object_column_from_parquet_is_told_by_its_schema(tmp_path, model_dir, select):
    png = solid_png(8, 8, rgb=(200, 30, 30))
    path = _plain_binary_parquet(tmp_path, [png] * 4)
    ddf = select(dd.read_parquet(path))
    assert ddf["jpg"].dtype == object  # the dtype does not say bytes
    path.unlink()  # reading data from here on fails
    out = ImageEmbedder(model_dir=model_dir, image_column="jpg")(ddf)
    with pytest.raises(FileNotFoundError):
        out.compute(scheduler="sync")


def test_the_schema_kind_embeds_like_an_explicit_kind(tmp_path, model_dir):
    pngs = [solid_png(8, 8, rgb=(10 * i, 200, 30)) for i in range(3)]
    path = _plain_binary_parquet(tmp_path, pngs)
    auto = ImageEmbedder(model_dir=model_dir, image_column="jpg")(dd.read_parquet(path)).compute(scheduler="sync")
    told = ImageEmbedder(model_dir=model_dir, image_column="jpg", image_kind="bytes")(dd.read_parquet(path)).compute(
        scheduler="sync"
    )
    assert auto["embedding_error"].isna().all()
    np.testing.assert_array_equal(np.stack(auto["embedding"]), np.stack(told["embedding"]))


def test_an_assigned_column_is_read_to_tell(tmp_path, model_dir):
    """A column an expression may have replaced is not taken from the schema: the call reads."""
    path = _plain_binary_parquet(tmp_path, [solid_png(8, 8)] * 2)
    ddf = dd.read_parquet(path)
    ddf = ddf.assign(jpg=ddf["jpg"])
    assert parquet_column_type(ddf, "jpg") is None
    path.unlink()
    with pytest.raises(FileNotFoundError):
        ImageEmbedder(model_dir=model_dir, image_column="jpg")(ddf)


def test_parquet_column_type(tmp_path):
    path = _plain_binary_parquet(tmp_path, [b"x"])
    ddf = dd.read_parquet(path)
    assert parquet_column_type(ddf, "jpg") == pa.binary()
    assert parquet_column_type(ddf[["n"]], "n") == pa.int64()
    assert parquet_column_type(ddf, "missing") is None
    assert parquet_column_type(dd.from_pandas(pd.DataFrame({"jpg": [1]}), npartitions=1), "jpg") is None
