"""Border rows one way at twice the margin (``border.py``, "One way"), against brute force.

A row of cluster A goes only to clusters B > A, within ``2 h_AB``: the pairs that need all of
that margin are lopsided ones whose row in the lower-numbered cluster is deep in it (gap close
to ``2 h_AB``) and whose partner sits just over the border. The set plants such pairs alone
(no other row near them), so a narrower margin loses them.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
from local_dask import THREADS

from dask_clip.dedup import border, workflow
from dask_clip.dedup.assign import nearest_centroid
from dask_clip.dedup.workflow import attach_results, cluster_results, prepare

D = 64
EPS0 = 0.02  # the planted pairs' distance; runs use eps = EPS0 + NUDGE
NUDGE = 2e-5


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def lopsided_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """float32 rows, float32 centroids, and the planted pairs (row in the lower cluster first)."""
    rng = np.random.default_rng(seed)
    k = 8
    base = unit(rng.standard_normal(D))
    c = unit(base + 0.6 * unit(rng.standard_normal((k, D))))
    x = [unit(c[rng.integers(0, k, 1200)] + 0.9 * unit(rng.standard_normal((1200, D))))]
    theta = np.arccos(1.0 - EPS0) / 2.0
    pairs = []
    for lo, hi in [(0, 1), (2, 3), (4, 5), (6, 7), (1, 6)]:
        m = unit(c[lo] + c[hi])
        d = c[lo] - c[hi]
        u = unit(d - (d @ m) * m)
        a = np.cos(1.96 * theta) * m + np.sin(1.96 * theta) * u  # deep in lo: gap ~0.98 of 2 h
        b = np.cos(0.04 * theta) * m - np.sin(0.04 * theta) * u  # just over the border, in hi
        pairs.append((a, b))
    rows = np.concatenate(x + [np.stack(p) for p in pairs]).astype(np.float32)
    n = len(x[0])
    return rows, c.astype(np.float32), [(n + 2 * i, n + 2 * i + 1) for i in range(len(pairs))]


@pytest.fixture(scope="module")
def lopsided():
    return lopsided_set()


def frame(x: np.ndarray) -> pd.DataFrame:
    import pyarrow as pa

    n, d = x.shape
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))
    return pd.DataFrame({"name": [f"r{i}" for i in range(n)], "embedding": pd.arrays.ArrowExtensionArray(emb)})


def run(x, c, eps, *, one_way: bool, config: dict | None = None, parts: int = 3, **kwargs):
    ddf = dd.from_pandas(frame(x), npartitions=parts, sort=False)
    before = workflow.ONE_WAY_FRACTION
    workflow.ONE_WAY_FRACTION = np.inf if one_way else -1.0  # force the rule the sample would choose
    try:
        with dask.config.set({**THREADS, **(config or {})}):
            plan = prepare(ddf, centroids=c, eps=eps, id_column="name", **kwargs)
            assert plan.border_one_way == one_way
            return plan, attach_results(plan, cluster_results(plan)).compute()
    finally:
        workflow.ONE_WAY_FRACTION = before


def test_the_pairs_need_the_whole_doubled_margin(lopsided):
    x, c, pairs = lopsided
    xt = torch.from_numpy(x)
    labels, _ = nearest_centroid(xt, torch.from_numpy(c))
    labels = labels.numpy()
    sims = x.astype(np.float64) @ c.astype(np.float64).T
    h = border.half_margins(c, EPS0 + NUDGE)
    deep = []
    for a, b in pairs:
        la, lb = labels[a], labels[b]
        assert la < lb  # the deep row is in the lower-numbered cluster: it must travel
        assert abs(x[a].astype(np.float64) @ x[b] - (1 - EPS0)) < 1e-6
        deep.append((sims[a, la] - sims[a, lb]) / h[la, lb])
        others = np.delete(x, [a, b], axis=0).astype(np.float64) @ x[[a, b]].T.astype(np.float64)
        assert others.max() < 1 - EPS0 - 0.005  # alone: no other row can flag them
    assert min(deep) > 1.9, deep  # each needs more than 1.9 h_AB of the 2 h_AB


@pytest.mark.parametrize("config", [{}, {"dask_clip.dedup.single-task-bytes": 0}], ids=["one-task", "shuffled"])
@pytest.mark.parametrize("rule", ["hard", "easy"])
def test_one_way_loses_no_pair(lopsided, helpers, config, rule):
    x, c, pairs = lopsided
    eps = EPS0 + NUDGE
    plan, out = run(x, c, eps, one_way=True, config=config, which_to_keep=rule)
    assert plan.single_task == (not config)
    _, two_way = run(x, c, eps, one_way=False, config=config, which_to_keep=rule)
    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    _, sims = nearest_centroid(xt, torch.from_numpy(c))
    keys = sims.numpy().astype(np.float64) * (1 if rule == "hard" else -1)
    best, _ = helpers.global_brute_force(x, np.ones(len(x), bool), keys)
    truth = best >= 1 - eps
    flagged = out["duplicate"].to_numpy()
    assert truth.sum() == len(pairs)
    assert np.array_equal(flagged, truth)
    np.testing.assert_allclose(out["max_similarity"].to_numpy()[flagged], best[flagged], atol=2e-6)
    pd.testing.assert_frame_equal(out, two_way)  # the same answer as the two-way rule


def test_the_plan_takes_one_way_where_it_tests_fewer_pairs(helpers):
    """A cloud split by several centroids (every row near all their borders): one way; the
    crowded border set of the other tests (rows near one border each): two ways."""
    rng = np.random.default_rng(4)
    centre = unit(rng.standard_normal(D))
    cloud = unit(centre + 1.0 * unit(rng.standard_normal((3000, D)))).astype(np.float32)
    ddf = dd.from_pandas(pd.DataFrame({"embedding": helpers.embedding_array(cloud)}), npartitions=2)
    with dask.config.set(THREADS):
        plan = prepare(ddf, n_clusters=4, eps=0.05, seed=0)
    two, one = plan.info["border_pairs_two_way_vs_one_way"]
    assert plan.border_one_way and one < 0.8 * two, plan.info
    bs = helpers.make_border_set()
    ddf = dd.from_pandas(helpers.frame(bs), npartitions=2, sort=False)
    with dask.config.set(THREADS):
        plan = prepare(ddf, centroids=bs.centroids, eps=0.05)
    assert not plan.border_one_way, plan.info
    with dask.config.set(THREADS):  # no one way under a memory budget (its plan counts two-way rows)
        plan = prepare(ddf, centroids=bs.centroids, eps=0.05, max_memory="256MiB")
    assert not plan.border_one_way
