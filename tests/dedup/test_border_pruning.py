"""Adversarial data for the border-aware pruning rules, against brute force over all pairs.

Border-aware dedup skips work with three bounds (:mod:`dask_clip.dedup.border`): a row is sent
to a neighbouring cluster only within the margin ``h_AB``; a border row travels as a sketch
whose dot products bound the true similarity from above, and only the pairs the sketch bound
lets through get an exact check, in the border row's own cluster block. Any rule that dropped
a true pair would show here as a row brute force flags and the run does not. The data put pairs
where the bounds are tight: exactly on the threshold with their difference along ``c_A - c_B``
(both gaps equal to the margin), lopsided across a border (one row deep in its cluster, the
other just over the border), identical copies on a bisector, clusters of one row, and a
centroid no row is nearest to that still receives border rows.
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
from dask_clip.dedup.assign import nearest_centroid, nearest_centroid_and_border
from dask_clip.dedup.kmeans import normalize_rows
from dask_clip.dedup.pairwise import verify_candidates
from dask_clip.dedup.workflow import attach_results, cluster_results, prepare

D = 64  # coarse_dims(64) = 16, sketch_dims(64) = 32 < d: the sketch bounds are loose enough to matter
EPS0 = 0.02  # the planted pairs' distance; runs use eps = EPS0 + NUDGE
NUDGE = 2e-5  # far above float32 rounding (~1e-7), far below the bounds' slack (1e-4)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def pair_at(m: np.ndarray, u: np.ndarray, eps: float, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors at cosine exactly ``1 - eps`` on the great circle through ``m`` along ``u``.

    ``u`` is orthogonal to ``m``; ``shift`` (in units of the pair's half-angle) moves the pair
    along ``u``: 0 puts ``m`` midway between them.
    """
    theta = np.arccos(1.0 - eps) / 2.0
    a = np.cos((1 + shift) * theta) * m + np.sin((1 + shift) * theta) * u
    b = np.cos((shift - 1) * theta) * m + np.sin((shift - 1) * theta) * u
    return a, b


def adversarial_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """float32 rows (n, D), float32 centroids (k, D), and the planted structures."""
    rng = np.random.default_rng(seed)
    k = 9
    base = unit(rng.standard_normal(D))
    c = unit(base + 0.6 * unit(rng.standard_normal((k, D))))  # correlated: crowded borders
    # a centroid midway between 0 and 1 that no row will be nearest to (rows near it are removed)
    empty = 8
    c[empty] = unit(c[0] + c[1] + 0.05 * unit(rng.standard_normal(D)))
    bulk = unit(c[rng.integers(0, empty, 1400)] + 0.9 * unit(rng.standard_normal((1400, D))))
    planted: dict[str, list] = {"aligned": [], "lopsided": [], "copies": [], "singletons": []}
    rows = [bulk]

    def add(*vs: np.ndarray) -> list[int]:
        start = sum(len(r) for r in rows)
        rows.append(np.stack(vs))
        return list(range(start, start + len(vs)))

    for a_c, b_c in [(2, 3), (3, 4), (4, 5), (2, 5), (6, 7), (5, 6)]:
        m = unit(c[a_c] + c[b_c])
        u = unit((c[a_c] - c[b_c]) - ((c[a_c] - c[b_c]) @ m) * m)
        # both gaps equal the margin: the worst case of the border bound
        planted["aligned"].append(add(*pair_at(m, u, EPS0)))
        # one row barely over the border, the other deep in its cluster
        planted["lopsided"].append(add(*pair_at(m, u, EPS0, shift=0.9)))
        planted["lopsided"].append(add(*pair_at(m, u, EPS0, shift=-0.95)))
    # identical copies on a bisector (a tie between two centroids), and near it
    m = unit(c[6] + c[4])
    planted["copies"] = [add(m, m, m, unit(m + 0.01 * unit(rng.standard_normal(D))))]
    # two clusters of one row each, a pair across their border: centroids 9 and 10 at the rows
    p = unit(-base + 0.2 * unit(rng.standard_normal(D)))  # far from all other rows
    w = unit(rng.standard_normal(D) - (rng.standard_normal(D) @ p) * p)
    w = unit(w - (w @ p) * p)
    a, b = pair_at(p, w, EPS0)
    planted["singletons"] = [add(a, b)]
    theta = np.arccos(1.0 - EPS0) / 2.0
    c_a = np.cos(2 * theta) * p + np.sin(2 * theta) * w  # beyond a: a is nearest to it
    c_b = np.cos(2 * theta) * p - np.sin(2 * theta) * w
    c = np.concatenate([c, np.stack([c_a, c_b])]).astype(np.float64)
    x = np.concatenate(rows)
    keep = np.argmax(x @ c.T, axis=1) != empty
    assert keep[len(bulk) :].all(), "a planted row is nearest to the empty centroid: change the seed"
    remap = np.cumsum(keep) - 1
    out: dict = {name: [[int(remap[i]) for i in grp] for grp in grps] for name, grps in planted.items()}
    out["empty_centroid"] = empty
    return x[keep].astype(np.float32), c.astype(np.float32), out


@pytest.fixture(scope="module")
def adversarial():
    return adversarial_set()


def hard_keys(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The "hard" keep rule's key, by the library's own function: the planted pairs are
    symmetric, so their keys tie up to rounding, and only the same arithmetic orders them alike."""
    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    _, sims = nearest_centroid(xt, torch.from_numpy(normalize_rows(c)))
    return sims.numpy().astype(np.float64)


def frame(x: np.ndarray) -> pd.DataFrame:
    import pyarrow as pa

    n, d = x.shape
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))
    return pd.DataFrame({"name": [f"r{i}" for i in range(n)], "embedding": pd.arrays.ArrowExtensionArray(emb)})


def run(x: np.ndarray, c: np.ndarray, eps: float, parts: int, **kwargs) -> pd.DataFrame:
    ddf = dd.from_pandas(frame(x), npartitions=parts, sort=False)
    limit = (
        {"dask_clip.dedup.single-task-bytes": kwargs.pop("single-task-bytes")} if "single-task-bytes" in kwargs else {}
    )
    one_way = kwargs.pop("one_way", None)  # force the rule the plan would choose from the sample
    before = workflow.ONE_WAY_FRACTION
    if one_way is not None:
        workflow.ONE_WAY_FRACTION = np.inf if one_way else -1.0
    try:
        with dask.config.set({**THREADS, **limit}):
            plan = prepare(ddf, centroids=c, eps=eps, id_column="name", **kwargs)
            assert one_way is None or plan.border_one_way == (one_way and plan.border_aware)
            return attach_results(plan, cluster_results(plan)).compute()
    finally:
        workflow.ONE_WAY_FRACTION = before


def test_the_set_is_adversarial(adversarial):
    """The premises: planted pairs straddle borders, sit on the threshold, one cluster gets only guests."""
    x, c, planted = adversarial
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    labels, _, (rows, hosts, _) = nearest_centroid_and_border(xt, ct, border.margin_scale(EPS0 + NUDGE))
    labels = labels.numpy()
    assert planted["empty_centroid"] not in labels
    assert (hosts.numpy() == planted["empty_centroid"]).sum() > 0  # border rows visit a cluster with no rows
    xs = x.astype(np.float64)
    for name in ("aligned", "lopsided", "singletons"):
        for a, b in planted[name]:
            assert labels[a] != labels[b], name
            assert abs(xs[a] @ xs[b] - (1 - EPS0)) < 1e-6, name
    counts = np.bincount(labels, minlength=len(c))
    assert counts[-1] == 1 and counts[-2] == 1  # the two clusters of one row
    # lopsided: one row of the pair is not a border row of the other's cluster (found one way only)
    # and of those, the border row is the one nearer the border, so "hard" ranks it first (the
    # host's row is flagged, its result made in the border row's block) and "easy" last (the
    # border row is flagged): the runs below use both rules
    r, h = rows.numpy(), hosts.numpy()
    keys = hard_keys(x, c)
    later_is_guest = []
    for a, b in planted["lopsided"]:
        a_in = ((r == a) & (h == labels[b])).any()
        b_in = ((r == b) & (h == labels[a])).any()
        assert a_in or b_in
        if a_in != b_in:
            guest, host_row = (a, b) if a_in else (b, a)
            later_is_guest.append((keys[guest], guest) > (keys[host_row], host_row))
    assert len(later_is_guest) >= 6 and not any(later_is_guest)
    assert len({labels[i] for i in planted["copies"][0][:3]}) == 1


@pytest.mark.parametrize(
    ("eps", "parts", "kwargs"),
    [
        (EPS0 + NUDGE, 3, {}),
        (EPS0 + NUDGE, 4, {"npartitions": 3, "which_to_keep": "random"}),
        (EPS0 + NUDGE, 2, {"max_memory": "1MiB"}),  # clusters packed by partition number
        (0.05, 3, {"which_to_keep": "easy"}),
        (EPS0 + NUDGE, 3, {"single-task-bytes": 0}),  # shuffled, not one task (the input is small)
        (0.05, 3, {"which_to_keep": "easy", "single-task-bytes": 0}),
        # border rows one way at twice the margin (the lopsided pairs need all of it)
        (EPS0 + NUDGE, 3, {"one_way": True}),
        (EPS0 + NUDGE, 3, {"one_way": True, "which_to_keep": "easy", "single-task-bytes": 0}),
        (0.05, 4, {"one_way": True, "which_to_keep": "random", "npartitions": 3, "single-task-bytes": 0}),
    ],
)
def test_pruning_loses_no_pair(adversarial, helpers, eps, parts, kwargs):
    x, c, planted = adversarial
    out = run(x, c, eps, parts, **kwargs)
    plain = run(x, c, eps, parts, border_aware=False, **kwargs)
    labels = out["cluster"].to_numpy()
    rule = kwargs.get("which_to_keep", "hard")
    if rule == "hard":
        keys = hard_keys(x, c)
    elif rule == "easy":
        keys = -hard_keys(x, c)
    else:
        from dask_clip.dedup.assign import random_keys

        keys = random_keys(torch.nn.functional.normalize(torch.from_numpy(x), dim=1), 0).numpy()
    best, _ = helpers.global_brute_force(x, np.ones(len(x), bool), keys)
    truth = best >= 1 - eps
    near = np.abs(best - (1 - eps)) < 1e-6
    assert not near.any(), "a pair within rounding of the threshold: the planted ones sit NUDGE inside"
    flagged = out["duplicate"].to_numpy()
    missed, extra = np.flatnonzero(truth & ~flagged), np.flatnonzero(flagged & ~truth)
    assert not len(missed) and not len(extra), f"missed {missed}, extra {extra}"
    # every planted pair is caught, and plain SemDeDup misses the ones across a border
    for name in ("aligned", "lopsided", "singletons"):
        for a, b in planted[name]:
            assert flagged[a] or flagged[b], name
    crossing = [(a, b) for a, b in planted["aligned"] + planted["lopsided"] if labels[a] != labels[b]]
    pf = plain["duplicate"].to_numpy()
    names = out["name"].to_numpy()
    of_plain = plain["duplicate_of"].fillna("").to_numpy()
    assert not any(of_plain[a] == names[b] or of_plain[b] == names[a] for a, b in crossing)
    assert pf.sum() < flagged.sum()
    # each flagged row names a row ranked ahead of it within eps, with the brute-force similarity
    of = out["duplicate_of"].to_numpy()
    pos = {n: i for i, n in enumerate(names)}
    xs = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    for i in np.flatnonzero(flagged):
        j = pos[of[i]]
        assert (keys[j], j) < (keys[i], i)
        assert xs[i] @ xs[j] >= 1 - eps
    np.testing.assert_allclose(out["max_similarity"].to_numpy()[flagged], best[flagged], atol=2e-6)
    assert sum(labels[pos[of[i]]] != labels[i] for i in np.flatnonzero(flagged)) >= 5  # across borders


def test_copies_on_a_bisector_keep_the_first(adversarial):
    x, c, planted = adversarial
    out = run(x, c, EPS0 + NUDGE, 3)
    copies = planted["copies"][0][:3]
    flagged = out["duplicate"].to_numpy()
    # identical rows, identical keys: the first in input order is kept, the others name it
    assert not flagged[copies[0]] and flagged[copies[1]] and flagged[copies[2]]
    assert (out["duplicate_of"].to_numpy()[copies[1:]] == out["name"].to_numpy()[copies[0]]).all()
    np.testing.assert_allclose(out["max_similarity"].to_numpy()[copies[1:]], 1.0, atol=1e-6)


def test_sketch_candidates_are_a_superset_of_the_pairs():
    """Pairs whose difference lies outside the sketch basis: the bound is tight, nothing is lost."""
    rng = np.random.default_rng(1)
    c = unit(rng.standard_normal((20, D))).astype(np.float32)
    q = border.sketch_basis(c)
    basis = torch.from_numpy(q)
    own = unit(rng.standard_normal((300, D)))
    # partners: each own row moved out of the basis' span (the residual carries the difference)
    off = rng.standard_normal((300, D))
    off -= (off @ q.astype(np.float64)) @ q.T.astype(np.float64)
    guests = unit(own + unit(off) * rng.uniform(0.0, 0.25, (300, 1)))
    guests = np.concatenate([guests, unit(rng.standard_normal((200, D)))])
    eps = 0.02
    t = border.duplicate_threshold(eps)
    o, g = (torch.from_numpy(v.astype(np.float32)) for v in (own, guests))
    gi, oi = border.sketch_candidates(border.sketch(o, basis), border.sketch(g, basis), t, block_size=64)
    got = set(zip(gi.tolist(), oi.tolist()))
    exact = (g @ o.T).numpy()
    want = set(zip(*np.nonzero(exact >= t)))
    assert len(want) > 50
    assert want <= got
    assert len(got) < exact.size / 10  # and the bound does prune


def test_coarse_sketch_is_the_rank_r_sketch_and_bounds_above_the_fine_one():
    """The dense test's rank-r sketch, taken from the rank-R one a border row travels with, is the
    sketch of the basis' first r columns; it bounds every pair at least as loosely as the fine one,
    which bounds the exact similarity: so the two levels keep every pair the exact test would."""
    rng = np.random.default_rng(4)
    c = unit(rng.standard_normal((40, D))).astype(np.float32)
    basis = torch.from_numpy(border.sketch_basis(c))
    r, big_r = border.coarse_dims(D), border.sketch_dims(D)
    assert basis.shape == (D, big_r) and r < big_r
    x = torch.from_numpy(
        unit(c[rng.integers(0, 40, 400)] + 0.4 * unit(rng.standard_normal((400, D)))).astype(np.float32)
    )
    fine = border.sketch(x, basis)
    coarse = border.coarse_sketch(fine, r)
    torch.testing.assert_close(coarse, border.sketch(x, basis[:, :r]), atol=1e-5, rtol=0)
    exact, f, co = x @ x.T, fine @ fine.T, coarse @ coarse.T
    assert bool((f >= exact - 1e-6).all()) and bool((co >= f - 1e-6).all())
    assert float((co > f + 1e-3).float().mean()) > 0.5  # the second level is tighter on most pairs
    assert border.coarse_sketch(fine, big_r) is fine  # nothing to drop


def test_two_level_candidates_are_the_pairs_both_sketches_pass():
    """Dense coarse tiles, then the fine re-test: the candidates are exactly the pairs that pass
    both bounds (up to float32 rounding at the threshold), a superset of the exact pairs, and
    fewer than the coarse bound alone passes."""
    rng = np.random.default_rng(5)
    c = unit(rng.standard_normal((20, D))).astype(np.float32)
    basis = torch.from_numpy(border.sketch_basis(c))
    own = unit(c[rng.integers(0, 20, 300)] + 0.5 * unit(rng.standard_normal((300, D))))
    guests = np.concatenate(
        [unit(own[:200] + 0.12 * unit(rng.standard_normal((200, D)))), unit(rng.standard_normal((500, D)))]
    )
    o, g = (torch.from_numpy(v.astype(np.float32)) for v in (own, guests))
    of, gf = border.sketch(o, basis), border.sketch(g, basis)
    r = border.coarse_dims(D)
    oc, gc = border.coarse_sketch(of, r), border.coarse_sketch(gf, r)
    t = border.duplicate_threshold(0.02)
    floor = t - border.SKETCH_SLACK
    gi, oi = border.sketch_candidates(oc, gc, t, block_size=64, own_fine=of, guest_fine=gf)
    got = set(zip(gi.tolist(), oi.tolist()))
    assert len(got) == gi.numel()  # each pair once

    def pairs(mask: torch.Tensor) -> set:
        return set(zip(*(v.tolist() for v in torch.nonzero(mask, as_tuple=True))))

    coarse_b, fine_b = gc @ oc.T, gf @ of.T
    assert pairs((coarse_b >= floor + 1e-6) & (fine_b >= floor + 1e-6)) <= got
    assert got <= pairs((coarse_b >= floor - 1e-6) & (fine_b >= floor - 1e-6))
    exact = pairs(g @ o.T >= t)
    assert len(exact) > 50 and exact <= got
    assert len(got) < 0.8 * len(pairs(coarse_b >= floor))


def test_verify_refuses_candidates_routed_to_the_wrong_block():
    """A candidate whose border row is not in the block means two shuffles routed differently."""
    from dask_clip.dedup.pairwise import border_block

    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((40, D))).astype(np.float32)
    c = x[[0, 20]]
    ddf = dd.from_pandas(frame(x), npartitions=1)
    from dask_clip.dedup.assign import assign_border_partition

    q = border.sketch_basis(c)
    own, guests = assign_border_partition(
        ddf.compute(),
        c,
        number=0,
        border_scale=border.margin_scale(0.5),
        sketch_basis=q,
        embedding_column="embedding",
        id_column="name",
        which_to_keep="hard",
        seed=0,
    )
    _, cand = border_block(own, guests, eps=0.5, sketch_basis=q)
    assert len(cand) > 0
    verify_candidates(own, cand, eps=0.5)  # the right block: fine
    wrong = own[own["cluster"] != cand["cluster"].iloc[0]]
    with pytest.raises(RuntimeError, match="without their rows"):
        verify_candidates(wrong, cand, eps=0.5)


def test_border_rows_travel_whole_where_the_sketch_cannot_prune(helpers):
    """Tight groups in directions the sketch basis misses: the sketch bound passes most pairs, so border rows carry their embeddings
    (candidates would outweigh them) and the host block checks the pairs; same answer as brute force."""
    rng = np.random.default_rng(3)
    c = unit(rng.standard_normal((6, D))).astype(np.float32)
    centres = unit(rng.standard_normal((40, D)))  # tight groups the 6 centroids' basis does not see
    x = unit(centres[rng.integers(0, 40, 1500)] + 0.35 * unit(rng.standard_normal((1500, D))))
    a = rng.choice(1500, 60, replace=False)
    x = np.concatenate([x, unit(x[a] + 0.08 * unit(rng.standard_normal((60, D))))]).astype(np.float32)
    eps = 0.05
    ddf = dd.from_pandas(frame(x), npartitions=3, sort=False)
    with dask.config.set(THREADS):
        plan = prepare(ddf, centroids=c, eps=eps, id_column="name")
    assert plan.border_embeddings, plan.info
    out = run(x, c, eps, 3)
    labels = out["cluster"].to_numpy()
    best, partner = helpers.global_brute_force(x, np.ones(len(x), bool), hard_keys(x, c))
    assert not (np.abs(best - (1 - eps)) < 1e-6).any()
    assert (truth_split := (best >= 1 - eps) & (labels != labels[np.maximum(partner, 0)])).sum() >= 5, truth_split.sum()
    truth = best >= 1 - eps
    flagged = out["duplicate"].to_numpy()
    assert truth.sum() >= 30
    assert np.array_equal(flagged, truth)
    np.testing.assert_allclose(out["max_similarity"].to_numpy()[flagged], best[flagged], atol=2e-6)


def test_both_ways_of_shipping_border_rows_agree(adversarial, monkeypatch):
    """The same run with border rows as sketches and, forced, with their embeddings."""
    x, c, _ = adversarial
    sketched = run(x, c, EPS0 + NUDGE, 3)
    monkeypatch.setattr(border, "CANDIDATES_PER_BORDER_ROW", -1.0)  # never worth sketching
    ddf = dd.from_pandas(frame(x), npartitions=3, sort=False)
    with dask.config.set(THREADS):
        assert prepare(ddf, centroids=c, eps=EPS0 + NUDGE).border_embeddings
    whole = run(x, c, EPS0 + NUDGE, 3)
    pd.testing.assert_frame_equal(sketched, whole)
