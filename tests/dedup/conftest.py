"""Synthetic clustered embeddings with planted near-duplicates, and a brute-force SemDeDup.

The brute force computes every pair's cosine similarity in float64 with NumPy (no blocks, no
Dask, no torch), so the dedup code is checked against an independent dense answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

EPS = 0.01


@dataclass
class Planted:
    """float32 ``(n, d)`` rows (unit length; NaN rows are nulls) and what was planted."""

    x: np.ndarray
    valid: np.ndarray  # bool (n,)
    groups: list[np.ndarray]  # near-duplicate groups (rows), cosine >= 0.997 inside a group
    near_misses: np.ndarray  # (m, 2) pairs with cosine about 0.98: duplicates at eps 0.05 only


def make_planted(
    n: int = 3000, d: int = 64, n_centres: int = 12, seed: int = 0, null_fraction: float = 0.02
) -> Planted:
    """Clusters (cosine about 0.5 between members) plus planted groups.

    60 groups: 40 pairs, 12 triples and 8 exact copies (identical vectors: ties), plus 20
    near-miss pairs at cosine about 0.98 and ``null_fraction`` null rows.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, d))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_centres, n)] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def near(src: np.ndarray, delta: float) -> np.ndarray:
        g = rng.standard_normal(src.shape)
        g *= delta / np.linalg.norm(g)
        v = src + g
        return v / np.linalg.norm(v)

    free = rng.permutation(n)
    take = iter(free)
    groups = []
    for size, delta in [(2, 0.05)] * 40 + [(3, 0.05)] * 12 + [(2, 0.0)] * 8:
        rows = np.array([next(take) for _ in range(size)])
        for r in rows[1:]:
            x[r] = near(x[rows[0]], delta) if delta else x[rows[0]]
        groups.append(rows)
    near_misses = []
    for _ in range(20):
        a, b = next(take), next(take)
        x[b] = near(x[a], 0.2)  # cosine about 0.98
        near_misses.append((a, b))
    valid = np.ones(n, bool)
    nulls = np.array([next(take) for _ in range(int(n * null_fraction))], dtype=np.int64)
    valid[nulls] = False
    x = x.astype(np.float32)
    x[~valid] = np.nan
    return Planted(x, valid, groups, np.array(near_misses))


def embedding_array(x: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """``list<float32>`` ArrowExtensionArray; NaN rows become nulls."""
    _n, d = x.shape
    valid = ~np.isnan(x).any(axis=1)
    offsets = np.concatenate([[0], np.cumsum(np.where(valid, d, 0))]).astype(np.int32)
    mask = pa.array(~valid)
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(x[valid].reshape(-1)), mask=mask)
    return pd.arrays.ArrowExtensionArray(arr)


def frame(p: Planted, index: bool = True) -> pd.DataFrame:
    """pandas frame: ``name`` (str ids), ``value`` and ``embedding``; string index ``img-<i>``."""
    n = len(p.x)
    df = pd.DataFrame(
        {"name": [f"n{i}" for i in range(n)], "value": np.arange(n) * 2, "embedding": embedding_array(p.x)},
    )
    if index:
        df.index = pd.Index([f"img-{i}" for i in range(n)], name="key")
    return df


def brute_force(x: np.ndarray, valid: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> tuple:
    """Dense SemDeDup: per cluster, rank by (key, position); max cosine to earlier ranks.

    Returns (max_similarity float64 (n,) NaN where none, partner int64 (n,) -1 where none).
    """
    n = len(x)
    xs = x.astype(np.float64)
    xs = xs / np.linalg.norm(np.where(valid[:, None], xs, 1.0), axis=1, keepdims=True)
    best = np.full(n, np.nan)
    partner = np.full(n, -1, np.int64)
    for c in np.unique(labels[valid]):
        rows = np.flatnonzero(valid & (labels == c))
        rows = rows[np.lexsort((rows, keys[rows]))]
        s = xs[rows] @ xs[rows].T
        for r in range(1, len(rows)):
            j = int(np.argmax(s[r, :r]))
            best[rows[r]] = s[r, j]
            partner[rows[r]] = rows[j]
    return best, partner


def all_near_pairs(x: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray:
    """Every pair (i < j) of valid rows with cosine >= 1 - eps: int64 (m, 2)."""
    xs = np.where(valid[:, None], x, 0).astype(np.float64)
    xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-300)
    s = xs @ xs.T
    i, j = np.nonzero(np.triu(s >= 1 - eps, k=1))
    return np.stack([i, j], axis=1)


def global_brute_force(x: np.ndarray, valid: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense dedup over ALL pairs: rank every valid row by (key, position); max cosine to earlier rows.

    Returns (max_similarity float64 (n,) NaN where none, partner int64 (n,) -1 where none);
    ties go to the earliest-ranked partner.
    """
    n = len(x)
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort((idx, keys[idx]))]
    xs = x[order].astype(np.float64)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    s = xs @ xs.T
    s[np.triu_indices(len(order))] = -np.inf  # only rows ranked ahead
    best = np.full(n, np.nan)
    partner = np.full(n, -1, np.int64)
    arg = np.argmax(s[1:], axis=1)  # first maximum: the earliest-ranked partner
    best[order[1:]] = s[np.arange(1, len(order)), arg]
    partner[order[1:]] = order[arg]
    return best, partner


@dataclass
class BorderSet:
    """Continuous clustered rows with near-duplicates planted across cluster borders."""

    x: np.ndarray  # float32 (n, d), unit rows
    centroids: np.ndarray  # float32 (k, d): the centroids the border pairs were planted for
    straddling: np.ndarray  # (m, 2): pairs at the midpoint of two neighbouring centroids
    junction: np.ndarray  # (j, 2): pairs in clusters A, B whose second-nearest is the same third C
    random_pairs: np.ndarray  # (r, 2): near-duplicates with cosine uniform in [0.95, 0.999]


def make_border_set(n: int = 3000, d: int = 32, k: int = 16, seed: int = 0) -> BorderSet:
    """A continuous cloud (a shared mean direction, 8 topics, noise) where borders are crowded.

    Centroids are trained by :func:`dask_clip.dedup.kmeans.fit_centroids` on the base rows;
    then pairs are planted across their borders: at the midpoints of neighbouring centroids
    (cosine about 0.997), at three-cluster junctions such that each row's second-nearest
    centroid is a third cluster (a rule that only looks at the second-nearest centroid misses
    them), plus random near-duplicates of random rows (cosine 0.95-0.999). Offsets are
    asymmetric so no two rows of a pair tie on the keep-rule key.
    """
    from dask_clip.dedup.kmeans import fit_centroids

    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    mean = unit(rng.standard_normal(d))
    topics = unit(rng.standard_normal((8, d)))
    x = unit(0.7 * mean + 0.6 * topics[rng.integers(0, 8, n)] + 0.55 * unit(rng.standard_normal((n, d))))
    c = fit_centroids(x.astype(np.float32), k, max_iter=20, seed=seed).astype(np.float64)
    rows: list[np.ndarray] = []

    def add(u: np.ndarray, v: np.ndarray) -> tuple[int, int]:
        rows.extend([unit(u), unit(v)])
        return n + len(rows) - 2, n + len(rows) - 1

    straddling = []
    near = np.argsort(-(c @ c.T), axis=1)[:, 1:3]  # each centroid's two nearest other centroids
    for a, b in sorted({(min(i, int(j)), max(i, int(j))) for i in range(k) for j in near[i]}):
        mid = unit(c[a] + c[b])
        step = 0.04 * unit(c[a] - c[b])
        wobble = 0.01 * unit(rng.standard_normal(d))  # no mirror images: distinct keys
        straddling.append(add(mid + 1.3 * step + wobble, mid - 0.7 * step))
    junction = []
    for _ in range(2000):
        if len(junction) == 6:
            break
        a, b, m = rng.choice(k, 3, replace=False)
        mid = unit(c[a] + c[b] + c[m])
        top = np.argsort(-(c @ mid))[:3]
        if set(top.tolist()) != {a, b, m}:
            continue
        ua, ub, um = (unit(c[i] - (c[i] @ mid) * mid) for i in (a, b, m))
        u, v = unit(mid + 0.035 * (ua + 0.45 * um)), unit(mid + 0.03 * (ub + 0.5 * um))
        su, sv = c @ u, c @ v
        if (
            np.argsort(-su)[:2].tolist() == [a, m]
            and np.argsort(-sv)[:2].tolist() == [b, m]
            and u @ v >= 0.995
            and np.sort(su)[-1] - np.sort(su)[-2] > 1e-4
            and np.sort(sv)[-1] - np.sort(sv)[-2] > 1e-4
        ):
            junction.append(add(u, v))
    random_pairs = []
    for src in rng.choice(n, 150, replace=False):
        z = rng.standard_normal(d)
        z = unit(z - (z @ x[src]) * x[src])
        gap = rng.uniform(0.001, 0.048)
        gap += 0.002 * (abs(gap - 0.01) < 0.001)  # keep clear of the thresholds tested (eps 0.01, 0.05)
        theta = np.arccos(1 - gap)
        rows.append(unit(x[src] * np.cos(theta) + z * np.sin(theta)))
        random_pairs.append((int(src), n + len(rows) - 1))
    x = np.concatenate([x, np.array(rows)]).astype(np.float32)
    return BorderSet(x, c.astype(np.float32), np.array(straddling), np.array(junction), np.array(random_pairs))


@pytest.fixture(scope="session")
def planted() -> Planted:
    return make_planted()


@pytest.fixture(scope="session")
def planted_df(planted: Planted) -> pd.DataFrame:
    return frame(planted)


@pytest.fixture(scope="module")
def border_set() -> BorderSet:
    """Rows placed on and around the clusters' borders (:func:`make_border_set`)."""
    return make_border_set()


@pytest.fixture(scope="module")
def border_df(border_set: BorderSet) -> pd.DataFrame:
    return frame(border_set)


@pytest.fixture
def dedup_client(client):
    """The session's real distributed cluster (2 worker processes, one thread each)."""
    return client


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_planted=make_planted,
        embedding_array=embedding_array,
        frame=frame,
        brute_force=brute_force,
        all_near_pairs=all_near_pairs,
        global_brute_force=global_brute_force,
        make_border_set=make_border_set,
        EPS=EPS,
    )


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Many small matmuls: one torch thread avoids spin-waiting on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
