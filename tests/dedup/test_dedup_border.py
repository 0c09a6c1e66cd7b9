"""Border-aware semantic_dedup against brute force over ALL pairs (not only within clusters).

The set (``make_border_set``) is a continuous cloud where cluster borders are crowded, with
near-duplicates planted across borders: midpoints of neighbouring centroids, three-cluster
junctions where each row's second-nearest centroid is a third cluster, and random pairs.
"""

from __future__ import annotations

import pickle

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
from local_dask import THREADS

from dask_clip.dedup import BorderTooWideError, border, semantic_dedup
from dask_clip.dedup.assign import nearest_centroid_and_border, random_keys
from dask_clip.dedup.border import MARGIN_SLACK, half_margins, margin_scale, split_border_rows
from dask_clip.dedup.budget import sample_rows_cap
from dask_clip.dedup.kmeans import draw_sample
from dask_clip.dedup.workflow import prepare

EPS = (0.01, 0.05)


def reference_keys(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, rule: str, seed: int = 0) -> np.ndarray:
    """The keep-rule key of every row (float64; ``random``: the library's seeded hash of the bits)."""
    xs = x.astype(np.float64)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    sim = np.einsum("ij,ij->i", xs, centroids.astype(np.float64)[labels]).astype(np.float32).astype(np.float64)
    if rule == "hard":
        return sim
    if rule == "easy":
        return -sim
    return random_keys(torch.nn.functional.normalize(torch.from_numpy(x), dim=1), seed).numpy()


def run(df: pd.DataFrame, centroids: np.ndarray, parts: int = 5, **kwargs) -> pd.DataFrame:
    ddf = dd.from_pandas(df, npartitions=parts, sort=False)
    with dask.config.set(THREADS):
        return semantic_dedup(ddf, centroids=centroids, seed=0, **kwargs).compute()


@pytest.mark.parametrize("rule", ["hard", "easy", "random"])
@pytest.mark.parametrize("eps", EPS)
def test_flagged_set_equals_brute_force_over_all_pairs(border_set, border_df, helpers, eps, rule, capsys):
    x, c = border_set.x, border_set.centroids
    out = run(border_df, c, eps=eps, which_to_keep=rule)
    plain = run(border_df, c, eps=eps, which_to_keep=rule, border_aware=False)
    labels = out["cluster"].to_numpy()
    # the clusters are the nearest centroids (float64), wherever the nearest is clear
    s = x.astype(np.float64) @ c.astype(np.float64).T
    top2 = np.sort(s, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    assert (labels[clear] == np.argmax(s, axis=1)[clear]).all()

    keys = reference_keys(x, c, labels, rule)
    best, partner = helpers.global_brute_force(x, np.ones(len(x), bool), keys)
    truth = best >= 1 - eps
    assert not (np.abs(best - (1 - eps)) < 1e-5).any(), "a pair on the threshold: change the seed"
    dup = np.flatnonzero(truth)
    gaps = np.abs(keys[dup] - keys[partner[dup]])
    assert (gaps[gaps > 0] > 1e-6).all(), "keys too close to order the same way in float32: change the seed"

    flagged = out["duplicate"].to_numpy()
    split = truth & (labels != labels[np.maximum(partner, 0)])
    with capsys.disabled():
        print(
            f"\n[border eps={eps} {rule}] duplicates {truth.sum()}, of them across a border {split.sum()}; "
            f"plain SemDeDup finds {plain['duplicate'].sum()}, border-aware {flagged.sum()}"
        )
    assert split.sum() >= 20  # the set really has cross-border duplicates
    assert np.array_equal(flagged, truth), "flagged set differs from brute force over all pairs"
    names = out.index.to_numpy()
    assert (out["duplicate_of"].to_numpy()[flagged] == names[partner[flagged]]).all()
    np.testing.assert_allclose(out["max_similarity"].to_numpy()[flagged], best[flagged], atol=2e-6)
    # rows without a duplicate keep the plain within-cluster value; plain flags are kept
    np.testing.assert_array_equal(
        out["max_similarity"].to_numpy()[~flagged], plain["max_similarity"].to_numpy()[~flagged]
    )
    assert not (plain["duplicate"].to_numpy() & ~flagged).any()
    assert (out["cluster"] == plain["cluster"]).all()


def test_every_kind_of_border_pair_is_found(border_set, border_df):
    out = run(border_df, border_set.centroids, eps=0.01)
    plain = run(border_df, border_set.centroids, eps=0.01, border_aware=False)
    cl, flagged = out["cluster"].to_numpy(), out["duplicate"].to_numpy()
    for kind in ("straddling", "junction"):
        pairs = getattr(border_set, kind)
        assert len(pairs) >= 5
        assert (cl[pairs[:, 0]] != cl[pairs[:, 1]]).all()  # really split
        assert (flagged[pairs[:, 0]] | flagged[pairs[:, 1]]).all()  # every pair caught
        # plain SemDeDup never pairs them (it may flag a row for another duplicate in its cluster)
        names = plain.index.to_numpy()
        of = plain["duplicate_of"].to_numpy()
        assert not any(of[a] == names[b] or of[b] == names[a] for a, b in pairs)


def test_junction_pairs_need_more_than_the_second_nearest(border_set):
    """Neither row of a junction pair has the other's cluster as its second-nearest centroid."""
    c = border_set.centroids.astype(np.float64)
    for a, b in border_set.junction:
        sa, sb = c @ border_set.x[a], c @ border_set.x[b]
        la, lb = np.argmax(sa), np.argmax(sb)
        assert np.argsort(-sa)[1] != lb and np.argsort(-sb)[1] != la


def test_same_answer_on_any_partitioning(border_set, border_df):
    a = run(border_df, border_set.centroids, eps=0.05, parts=1)
    b = run(border_df, border_set.centroids, eps=0.05, parts=7, npartitions=3)
    c = run(border_df, border_set.centroids, eps=0.05, parts=4, max_memory="1MiB")  # packed shuffle
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)


def test_smaller_margin_keeps_its_weaker_guarantee(border_set, border_df, helpers):
    """border_margin=f guarantees pairs within f² eps and flags nothing outside eps."""
    x, c, eps, f = border_set.x, border_set.centroids, 0.05, 0.5
    out = run(border_df, c, eps=eps, border_margin=f)
    full = run(border_df, c, eps=eps)
    labels = out["cluster"].to_numpy()
    best, _ = helpers.global_brute_force(x, np.ones(len(x), bool), reference_keys(x, c, labels, "hard"))
    flagged = out["duplicate"].to_numpy()
    assert not (flagged & ~(best >= 1 - eps)).any()  # only true duplicates
    within = out["max_similarity"].to_numpy() >= 1 - f * f * eps
    assert np.array_equal(within, best >= 1 - f * f * eps)  # every pair within f² eps
    assert flagged.sum() <= full["duplicate"].sum()


def test_margin_bound_holds_for_aligned_pairs():
    """The worst case of the bound: a - b along c_A - c_B. The pair is still caught, barely."""
    rng = np.random.default_rng(0)
    d, eps = 16, 0.01
    c = rng.standard_normal((6, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    half = half_margins(c.astype(np.float32), eps)
    assert np.isneginf(np.diag(half)).all() and np.allclose(half, half.T)
    d01 = np.linalg.norm(c[0] - c[1])
    assert half[0, 1] == pytest.approx(np.sqrt(2 * eps) * d01 / 2 + MARGIN_SLACK, rel=1e-5)
    caught = 0
    for a_, b_ in [(0, 1), (2, 3), (4, 5), (1, 4)]:
        u = (c[a_] - c[b_]) / np.linalg.norm(c[a_] - c[b_])
        mid = (c[a_] + c[b_]) / np.linalg.norm(c[a_] + c[b_])
        delta = np.sqrt(2 * eps) * 0.999  # a pair just inside eps, its difference along u
        for shift in np.linspace(-0.9, 0.9, 7):
            a = mid + (shift + 0.5) * delta * u
            b = mid + (shift - 0.5) * delta * u
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            if a @ b < 1 - eps:
                continue
            x = torch.from_numpy(np.stack([a, b]).astype(np.float32))
            sims = x @ torch.from_numpy(c.astype(np.float32)).T
            labels = torch.argmax(sims, dim=1)
            if labels[0] == labels[1]:
                continue
            ct = torch.from_numpy(c.astype(np.float32))
            rows, hosts, _ = split_border_rows(sims, labels, ct, margin_scale(eps))
            crossed = {(int(r), int(h)) for r, h in zip(rows, hosts)}
            # one row is a border row of the other's cluster, and the other's gap fits the rest
            la, lb = int(labels[0]), int(labels[1])
            assert (0, lb) in crossed or (1, la) in crossed
            caught += 1
    assert caught >= 8
    assert MARGIN_SLACK < 1e-3


def test_bad_border_arguments(border_df):
    ddf = dd.from_pandas(border_df, npartitions=2, sort=False)
    with pytest.raises(ValueError, match="border_margin"):
        semantic_dedup(ddf, border_margin=0)
    with pytest.raises(ValueError, match="border_margin"):
        semantic_dedup(ddf, border_margin=1.5)
    with pytest.raises(TypeError, match="border_margin"):
        semantic_dedup(ddf, border_margin="1")
    with pytest.raises(TypeError, match="border_aware"):
        semantic_dedup(ddf, border_aware="yes")
    with pytest.raises(ValueError, match="max_memory"):
        semantic_dedup(ddf, max_memory="lots")
    with pytest.raises(ValueError, match="max_memory"):
        semantic_dedup(ddf, max_memory=1000)


def test_warns_when_border_rows_outnumber_rows(border_df):
    """A wide margin (eps 0.3 on a crowded set) would more than double the shuffle: say so."""
    ddf = dd.from_pandas(border_df, npartitions=2, sort=False)
    with dask.config.set(THREADS), pytest.warns(UserWarning, match=r"border rows per row.*border_margin"):
        semantic_dedup(ddf, n_clusters=16, eps=0.3, max_iter=10)


def test_pair_margins_in_chunks_equal_the_formula(monkeypatch):
    """Margins are gathered in chunks (bounded memory); every chunk boundary gives the formula."""
    monkeypatch.setattr(border, "MARGIN_CHUNK", 7)
    rng = np.random.default_rng(3)
    c = rng.standard_normal((40, 8))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    scale = margin_scale(0.02)

    def expected(a, b):
        gram = np.clip((c[a] * c[b]).sum(axis=-1), -1, 1)
        return scale * np.sqrt(np.maximum(2 - 2 * gram, 0)) + MARGIN_SLACK

    ct = torch.from_numpy(c.astype(np.float32))
    a = rng.integers(0, 40, 1000)
    b = (a + rng.integers(1, 40, 1000)) % 40  # distinct clusters (at a == b float32 rounding is ~1e-5)
    got = border.pair_margins(ct, torch.from_numpy(a), torch.from_numpy(b), scale)
    np.testing.assert_allclose(got.numpy(), expected(a, b), atol=2e-6)
    a2 = rng.integers(6, 40, (30, 40))
    got2 = border.pair_margins(ct, torch.from_numpy(a2), 5, scale)
    assert got2.shape == (30, 40)
    np.testing.assert_allclose(got2.numpy(), expected(a2, np.full_like(a2, 5)), atol=2e-6)


def test_border_payload_beyond_the_budget_is_refused_early(border_set, border_df):
    """Wide margins copy each row to many clusters: with max_memory that is an early, clear error."""
    ddf = dd.from_pandas(border_df, npartitions=2, sort=False)
    kw = dict(centroids=border_set.centroids, eps=0.3, max_train_rows=2000)
    with dask.config.set(THREADS), pytest.warns(UserWarning, match="border rows per row"):
        with pytest.raises(BorderTooWideError, match=r"border about .* other clusters.*border_margin=0\.5") as err:
            semantic_dedup(ddf, max_memory="1MiB", **kw)
    e = pickle.loads(pickle.dumps(err.value))  # travels from a worker intact
    assert isinstance(e, MemoryError) and e.needed == err.value.needed > 2**20
    # the estimate is the real count within sampling error
    x = torch.nn.functional.normalize(torch.from_numpy(border_set.x), dim=1)
    c = torch.from_numpy(border_set.centroids)
    _, _, (rows, _, _) = nearest_centroid_and_border(x, c, margin_scale(0.3))
    real = len(rows) / len(x)
    assert real > 1 and err.value.border_rows_per_row == pytest.approx(real, rel=0.15)
    # a budget that holds the payload plans the run
    with dask.config.set(THREADS), pytest.warns(UserWarning, match="border rows per row"):
        plan = prepare(ddf, max_memory=err.value.needed * 2, **kw)
    assert plan.border_aware and plan.info["estimated_border_rows_per_row"] > 1


def test_max_memory_caps_only_the_default_sample(border_set, border_df):
    ddf = dd.from_pandas(border_df, npartitions=2, sort=False)
    cap = sample_rows_cap(2**20, border_set.x.shape[1])
    kw = dict(centroids=border_set.centroids, eps=0.01, max_memory="1MiB")
    with dask.config.set(THREADS):
        assert prepare(ddf, **kw).info["sample_rows"] == cap < 256 * len(border_set.centroids)
        assert prepare(ddf, max_train_rows=cap + 500, **kw).info["sample_rows"] == cap + 500


def test_border_rows_are_estimated_on_rows_kmeans_did_not_fit(border_set, border_df):
    """Training rows sit closer to their centroids than unseen rows: the estimate uses held-out rows."""
    ddf = dd.from_pandas(border_df, npartitions=2, sort=False)
    eps = 0.05
    with dask.config.set(THREADS):
        plan = prepare(ddf, n_clusters=16, eps=eps, max_iter=20, max_train_rows=800)
        sample = draw_sample(ddf, "embedding", max_rows=800, held_out=True)
        plain = draw_sample(ddf, "embedding", max_rows=800)
    np.testing.assert_array_equal(sample.x, plain.x)  # asking for held-out rows leaves training alone
    assert len(sample.held_out) == len(border_df) - 800
    c = torch.from_numpy(plan.centroids)
    per_row = {}
    for name, rows in (("train", sample.x), ("held", sample.held_out)):
        _, _, (r, _, _) = nearest_centroid_and_border(torch.from_numpy(rows), c, margin_scale(eps))
        per_row[name] = len(r) / len(rows)
    assert per_row["train"] < per_row["held"]
    assert plan.info["estimated_border_rows_per_row"] == pytest.approx(per_row["held"], rel=1e-9)
