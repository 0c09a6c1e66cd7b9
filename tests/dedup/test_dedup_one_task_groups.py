"""The one-task way split into groups of clusters (``pairwise.cluster_group``), one task each.

Every cluster's block must be computed by exactly one group (a block in no group loses its
pairs, one in two groups doubles results), and the groups together must give exactly the
answer of one group, which is brute force's over all pairs (border-aware) or within clusters
(plain SemDeDup): a candidate found in one group's block is checked against its border row,
which may belong to another group's cluster.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
from local_dask import THREADS

from dask_clip.dedup import border, pairwise, workflow
from dask_clip.dedup.assign import nearest_centroid
from dask_clip.dedup.workflow import attach_results, cluster_results, prepare

ARGS = dict(n_clusters=16, eps=0.05, seed=0, max_iter=20)


def frames(sizes: list[int], hosts: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Own rows with ``sizes[c]`` rows in cluster ``c``, border rows visiting ``hosts``."""
    own = pd.DataFrame({"cluster": np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)})
    return own, pd.DataFrame({"cluster": np.asarray(hosts, dtype=np.int32)})


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8])
def test_every_cluster_in_exactly_one_group(parts):
    rng = np.random.default_rng(parts)
    sizes = rng.integers(0, 50, 23).tolist()  # some clusters without rows
    sizes[5] = 400  # one heavy cluster
    hosts = rng.integers(0, 25, 300).tolist()  # border rows of clusters 23, 24: no own rows
    own, guests = frames(sizes, hosts)
    masks = [pairwise.cluster_group(own, guests, p, parts).numpy() for p in range(parts)]
    assert all(m.shape == (25,) for m in masks)
    np.testing.assert_array_equal(np.sum(masks, axis=0), np.ones(25, int))
    n = np.bincount(np.repeat(np.arange(23), sizes), minlength=25).astype(float)
    work = n * n / 2 + n * np.bincount(hosts, minlength=25)
    loads = [work[m].sum() for m in masks]
    # largest first, each to the least loaded: no group exceeds the mean by more than one cluster
    assert max(loads) <= work.sum() / parts + work.max()
    if parts > 1:
        assert masks[0][5] and masks[0].sum() == 1  # the heavy cluster alone: the rest weigh less


def test_plain_rows_without_border_rows():
    own, _ = frames([3, 0, 2], [])
    masks = [pairwise.cluster_group(own, None, p, 2).numpy() for p in range(2)]
    np.testing.assert_array_equal(masks[0] ^ masks[1], np.ones(3, bool))


def run(df: pd.DataFrame, parts: int, **kwargs):
    ddf = dd.from_pandas(df, npartitions=parts, sort=False)
    with dask.config.set(THREADS):
        plan = prepare(ddf, **{**ARGS, **kwargs})
        assert plan.single_task
        return plan, attach_results(plan, cluster_results(plan)).compute()


@pytest.mark.parametrize("mode", ["sketches", "embeddings", "plain"])
def test_groups_give_one_groups_answer_and_brute_force(border_set, border_df, helpers, mode, monkeypatch):
    # both ways border rows travel: sketches (candidates checked where the border row lives,
    # possibly another group's cluster) or embeddings (the host block checks the pairs)
    monkeypatch.setattr(border, "CANDIDATES_PER_BORDER_ROW", -1.0 if mode == "embeddings" else np.inf)
    aware = mode != "plain"
    plan, grouped = run(border_df, 6, border_aware=aware)  # six groups of clusters
    assert plan.border_embeddings == (mode == "embeddings")
    monkeypatch.setattr(workflow, "LOCAL_GROUPS", 1)
    _, single = run(border_df, 6, border_aware=aware)
    pd.testing.assert_frame_equal(grouped, single)

    x = border_set.x
    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    labels, sims = nearest_centroid(xt, torch.from_numpy(plan.centroids))
    labels, keys = labels.numpy(), sims.numpy().astype(np.float64)
    valid = np.ones(len(x), bool)
    best, partner = helpers.global_brute_force(x, valid, keys) if aware else helpers.brute_force(x, valid, labels, keys)
    truth = best >= 1 - ARGS["eps"]
    flagged = grouped["duplicate"].to_numpy()
    assert truth.sum() > 100 and np.array_equal(flagged, truth)
    names = grouped.index.to_numpy()
    assert (grouped["duplicate_of"].to_numpy()[flagged] == names[partner[flagged]]).all()
    if aware:  # cross-border pairs are among them
        assert (labels[flagged] != labels[partner[flagged]]).sum() >= 20
