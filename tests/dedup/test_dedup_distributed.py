"""End to end on a real distributed cluster (2 worker processes, P2P shuffles)."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from dask_clip.dedup import exact_duplicates, semantic_dedup

ARGS = dict(n_clusters=10, eps=0.01, seed=0, max_iter=20)


def test_semantic_dedup_on_local_cluster(dedup_client, planted_df):
    ddf = dd.from_pandas(planted_df, npartitions=4, sort=False)
    with dask.config.set(scheduler="threads"):  # the reference: no client, task shuffle
        local = semantic_dedup(ddf, **ARGS, shuffle_method="tasks").compute()
    out = semantic_dedup(ddf, **ARGS)  # the client is the default scheduler here
    got = out.compute()
    assert out.npartitions == 4
    pd.testing.assert_frame_equal(got, local)
    assert got["duplicate"].sum() > 60


def test_exact_duplicates_on_local_cluster(dedup_client):
    blobs = [bytes([i % 50]) * 100 for i in range(200)]
    df = pd.DataFrame({"image": pd.array(blobs, dtype=pd.ArrowDtype(pa.binary()))})
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=3, sort=False)
    got = exact_duplicates(ddf).compute()
    assert got.index.equals(df.index)
    assert got["exact_duplicate"].to_numpy().tolist() == [i >= 50 for i in range(200)]
    assert (got["exact_duplicate_of"][50:].to_numpy() == np.arange(50, 200) % 50).all()
