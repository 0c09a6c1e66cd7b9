"""Small inputs: the pairwise step in one task, without shuffles (``dask_clip.dedup.single-task-bytes``).

The one-task way must give exactly the shuffled way's answer (the same blocks, held by one
task), and that answer is brute force's: over all pairs for border-aware runs, within clusters
for plain SemDeDup.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
from local_dask import THREADS

from dask_clip.dedup import border
from dask_clip.dedup.assign import nearest_centroid
from dask_clip.dedup.workflow import attach_results, cluster_results, prepare

SHUFFLE = {"dask_clip.dedup.single-task-bytes": 0}  # always the shuffled way
ARGS = dict(n_clusters=16, eps=0.05, seed=0, max_iter=20)


def run(df: pd.DataFrame, parts: int = 3, config: dict | None = None, **kwargs):
    ddf = dd.from_pandas(df, npartitions=parts, sort=False)
    with dask.config.set({**THREADS, **(config or {})}):
        plan = prepare(ddf, **{**ARGS, **kwargs})
        return plan, attach_results(plan, cluster_results(plan)).compute()


def hard_keys(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the "hard" keep rule's keys, by the library's own arithmetic."""
    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    labels, sims = nearest_centroid(xt, torch.from_numpy(centroids))
    return labels.numpy(), sims.numpy().astype(np.float64)


@pytest.mark.parametrize("mode", ["sketches", "embeddings", "plain"])
def test_one_task_equals_the_shuffled_way_and_brute_force(border_set, border_df, helpers, mode, monkeypatch):
    # both ways border rows can travel: sketches (candidates checked in the border row's block)
    # or embeddings (the host block checks the pairs)
    monkeypatch.setattr(border, "CANDIDATES_PER_BORDER_ROW", -1.0 if mode == "embeddings" else np.inf)
    aware = mode != "plain"
    plan, one = run(border_df, border_aware=aware)
    assert plan.single_task and plan.border_embeddings == (mode == "embeddings")
    shuffled_plan, shuffled = run(border_df, config=SHUFFLE, border_aware=aware)
    assert not shuffled_plan.single_task
    pd.testing.assert_frame_equal(one, shuffled)

    x = border_set.x
    labels, keys = hard_keys(x, plan.centroids)
    np.testing.assert_array_equal(one["cluster"].to_numpy(), labels)
    valid = np.ones(len(x), bool)
    best, partner = helpers.global_brute_force(x, valid, keys) if aware else helpers.brute_force(x, valid, labels, keys)
    truth = best >= 1 - ARGS["eps"]
    flagged = one["duplicate"].to_numpy()
    assert truth.sum() > 100
    assert np.array_equal(flagged, truth)
    names = one.index.to_numpy()
    assert (one["duplicate_of"].to_numpy()[flagged] == names[partner[flagged]]).all()
    np.testing.assert_allclose(one["max_similarity"].to_numpy()[flagged], best[flagged], atol=2e-6)
    if aware:  # the border set's cross-border pairs are among them
        assert (labels[flagged] != labels[partner[flagged]]).sum() >= 20


def test_which_inputs_run_in_one_task(border_df):
    """Small inputs with a row count known before the graph; not over the size, not with a tight budget."""
    ddf = dd.from_pandas(border_df, npartitions=3, sort=False)
    size = len(border_df) * len(border_df["embedding"].iloc[0]) * 4  # bytes of the embeddings
    with dask.config.set(THREADS):
        assert prepare(ddf, **ARGS).single_task
        assert prepare(ddf, **ARGS, border_aware=False).single_task  # k-means sample: rows known
        c = prepare(ddf, **ARGS).centroids
        assert prepare(ddf, centroids=c, eps=0.05).single_task  # the first partition counted
        assert not prepare(ddf, centroids=c, eps=0.05, border_aware=False).single_task  # nothing read
        assert 4 * size > 2**20 and 4 * size <= 2**21
        assert not prepare(ddf, **ARGS, max_memory="1MiB").single_task  # the task would hold 4x
        assert prepare(ddf, **ARGS, max_memory="2MiB").single_task
        with dask.config.set({"dask_clip.dedup.single-task-bytes": size - 1}):
            assert not prepare(ddf, **ARGS).single_task
        with dask.config.set({"dask_clip.dedup.single-task-bytes": size}):
            assert prepare(ddf, **ARGS).single_task


def test_one_task_has_no_shuffle(border_df):
    ddf = dd.from_pandas(border_df, npartitions=3, sort=False)
    with dask.config.set(THREADS):
        one = cluster_results(prepare(ddf, **ARGS))
        with dask.config.set(SHUFFLE):
            shuffled = cluster_results(prepare(ddf, **ARGS))
    names = {str(k[0] if isinstance(k, tuple) else k).split("-")[0] for k in one.__dask_graph__()}
    assert "semdedup_local" in names and not any("shuffle" in n for n in names), names
    assert one.npartitions == ddf.npartitions and one.divisions == shuffled.divisions


def test_one_task_on_the_cluster(dedup_client, border_df):
    """On the session's worker processes: the in-process answer, and the input's partitions."""
    ddf = dd.from_pandas(border_df, npartitions=4, sort=False)
    with dask.config.set(THREADS):
        local = attach_results(plan := prepare(ddf, **ARGS), cluster_results(plan)).compute()
    plan = prepare(ddf, **ARGS)
    assert plan.single_task
    out = attach_results(plan, cluster_results(plan))
    assert out.npartitions == 4
    pd.testing.assert_frame_equal(out.compute(), local)
