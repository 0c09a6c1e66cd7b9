"""The cuDF path of the pHash step: same answers as the pandas path. Skipped where cuDF is not installed."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

cudf = pytest.importorskip("cudf")
dask_cudf = pytest.importorskip("dask_cudf")

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from local_dask import THREADS  # noqa: E402
from PIL import Image  # noqa: E402

from dask_clip.dedup.phash import image_hashes, phash_duplicates, phash_pixels  # noqa: E402
from dask_clip.testing import encode_image  # noqa: E402

pytestmark = pytest.mark.cudf


def test_phash_duplicates_cudf_equals_pandas():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 200, dtype=np.int64).astype(np.uint64)
    h = np.concatenate([base, base[:40] ^ np.uint64(0b1011), base[40:60] ^ np.uint64(1 << 40)])
    valid = np.ones(len(h), bool)
    valid[::17] = False
    pdf = pd.DataFrame({"key": [f"k{i}" for i in range(len(h))], "phash": pd.array(h, dtype="UInt64")})
    pdf.loc[~valid, "phash"] = pd.NA
    gdf = cudf.DataFrame(
        {"key": pdf["key"].tolist(), "phash": cudf.Series(h, dtype="uint64").where(cudf.Series(valid))}
    )
    with dask.config.set(THREADS):
        ref = phash_duplicates(dd.from_pandas(pdf, npartitions=3, sort=False), k=6, id_column="key").compute()
        got = phash_duplicates(dask_cudf.from_cudf(gdf, npartitions=3), k=6, id_column="key").compute()
    assert isinstance(got, cudf.DataFrame)
    got = got.to_pandas()
    np.testing.assert_array_equal(got["duplicate"].to_numpy(), ref["duplicate"].to_numpy())
    flagged = ref["duplicate"].to_numpy()
    assert got["duplicate_of"][flagged].tolist() == ref["duplicate_of"][flagged].tolist()
    assert got["hamming"][flagged].astype(int).tolist() == ref["hamming"][flagged].astype(int).tolist()


def test_image_hashes_cudf(photos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [encode_image(p, quality=90) for p in photos]
    pq.write_table(pa.table({"image": pa.array([*blobs, None], pa.binary())}), tmp_path / "images.parquet")
    gdf = cudf.read_parquet(tmp_path / "images.parquet")  # cuDF has no binary dtype: the bytes arrive as strings
    with dask.config.set(THREADS):
        got = image_hashes(dask_cudf.from_cudf(gdf, npartitions=2)).compute()
    want = phash_pixels([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    assert got["phash"].dtype == np.dtype("uint64")
    assert got["phash"].to_pandas()[: len(blobs)].astype("uint64").tolist() == want.tolist()
    assert got["phash"].isna().to_pandas().tolist() == [False] * len(blobs) + [True]
