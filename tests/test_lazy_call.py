"""``embedder(ddf)`` reads nothing for typed image columns: the input file can vanish between
the call and the compute, and only the compute fails."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import ImageEmbedder
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
