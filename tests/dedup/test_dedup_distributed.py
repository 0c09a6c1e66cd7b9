"""End to end on a real distributed cluster (2 worker processes, P2P shuffles spilling to disk)."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_dask import THREADS

from dask_clip.dedup import dedup_parquet, exact_duplicates, kmeans, semantic_dedup
from dask_clip.dedup.assign import ASSIGN_BLOCK_ROWS
from dask_clip.dedup.budget import PAIRWISE_COPIES, ClusterTooLargeError, sample_rows_cap
from dask_clip.dedup.workflow import prepare

ARGS = dict(n_clusters=10, eps=0.01, seed=0, max_iter=20)


def test_semantic_dedup_on_local_cluster(dedup_client, planted_df):
    ddf = dd.from_pandas(planted_df, npartitions=4, sort=False)
    with dask.config.set(THREADS):  # the reference: no client, task shuffle
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


def test_border_aware_on_local_cluster(dedup_client, helpers):
    """Border-aware (P2P shuffles, worker processes) gives the in-process answer."""
    bs = helpers.make_border_set()
    ddf = dd.from_pandas(helpers.frame(bs), npartitions=4, sort=False)
    with dask.config.set(THREADS):
        local = semantic_dedup(ddf, centroids=bs.centroids, eps=0.05, shuffle_method="tasks").compute()
    with dask.config.set({"dask_clip.dedup.single-task-bytes": 0}):  # the shuffled way, not one task
        got = semantic_dedup(ddf, centroids=bs.centroids, eps=0.05).compute()
    pd.testing.assert_frame_equal(got, local)


@pytest.fixture(scope="module")
def border_parquet(helpers, tmp_path_factory):
    """The border set as 4 Parquet files without a stored index (as `dask-clip embed` writes)."""
    bs = helpers.make_border_set()
    df = helpers.frame(bs).reset_index()
    folder = tmp_path_factory.mktemp("border")
    for i, part in enumerate(np.array_split(np.arange(len(df)), 4)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False), folder / f"part-{i}.parquet")
    return bs, df, str(folder)


def test_larger_than_memory_path_on_local_cluster(dedup_client, border_parquet, tmp_path):
    """A 1 MiB budget forces every bounded path; the answer is the unbounded one."""
    bs, df, folder = border_parquet
    budget = 2**20
    ddf = dd.read_parquet(folder, dtype_backend="pyarrow")
    plan = prepare(ddf, n_clusters=16, eps=0.01, max_iter=20, max_memory=budget)
    d = bs.x.shape[1]
    assert plan.info["shuffle_partitions"] > ddf.npartitions  # clusters packed into small partitions
    assert plan.assign_block_rows < ASSIGN_BLOCK_ROWS
    sizes = np.bincount(plan.shuffle_plan.part_of_cluster, weights=plan.shuffle_plan.estimated_rows)
    assert sizes.max() * d * 4 <= budget / PAIRWISE_COPIES
    sample = kmeans.draw_sample(ddf, "embedding", max_rows=256 * 16, max_memory=budget)
    assert len(sample.x) == sample_rows_cap(budget, d) < 256 * 16  # the k-means sample is capped

    out_dir = tmp_path / "out"
    summary = dedup_parquet(
        folder, str(out_dir), eps=0.01, n_clusters=16, max_iter=20, max_memory="1MiB", columns=["key", "name"]
    )
    back = pd.read_parquet(out_dir)
    assert list(back.columns) == ["key", "name", "cluster", "max_similarity", "duplicate", "duplicate_of"]
    assert back.index.tolist() == list(range(len(df)))
    # the same run without a budget, in-process, with the same (capped-sample) centroids
    with dask.config.set(THREADS):
        c = kmeans.train_centroids(ddf, "embedding", 16, max_iter=20, max_memory=budget)
        ref = semantic_dedup(
            dd.from_pandas(df, npartitions=3, sort=False), centroids=c, eps=0.01, shuffle_method="tasks"
        ).compute()
    np.testing.assert_array_equal(back["cluster"].to_numpy(), ref["cluster"].to_numpy())
    np.testing.assert_array_equal(back["duplicate"].to_numpy(), ref["duplicate"].to_numpy())
    np.testing.assert_array_equal(
        back["max_similarity"].to_numpy(dtype=np.float64, na_value=np.nan),
        ref["max_similarity"].to_numpy(dtype=np.float64),
    )
    flagged = ref["duplicate"].to_numpy()
    assert (back["duplicate_of"][flagged].to_numpy() == ref["duplicate_of"][flagged].to_numpy()).all()
    assert summary.loc[0.01, "duplicates"] == flagged.sum() > 40


def test_cluster_too_large_for_the_budget(dedup_client, border_parquet):
    bs, _, folder = border_parquet
    ddf = dd.read_parquet(folder, dtype_backend="pyarrow")
    # early, on the client: the k-means sample already shows a cluster of ~1,600 rows
    with pytest.raises(ClusterTooLargeError, match=r"cluster \d+ holds .*estimate.*--max-memory"):
        semantic_dedup(ddf, n_clusters=2, max_iter=10, max_memory="1MiB")
    # in the task: a 20-row sample cannot tell, the pairwise step counts and refuses
    # (one cluster: border rows reach a block as sketches, so its own rows must exceed the budget)
    c = kmeans.fit_centroids(bs.x, 1, max_iter=10)
    out = semantic_dedup(ddf, centroids=c, max_train_rows=20, max_memory="1MiB")
    with pytest.raises(ClusterTooLargeError, match=r"cluster \d+ holds .*counted.*raise n_clusters") as err:
        out.compute()
    assert err.value.rows > 1000 and err.value.needed > 2**20
