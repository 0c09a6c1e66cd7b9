"""Synthetic embeddings for the dedup benchmarks: CLIP-like and isotropic, with planted pairs.

``clip_like`` draws unit vectors the way CLIP image embeddings sit in their space, roughly:
a shared mean direction (CLIP's "cone": unrelated images still have cosine ~0.3), 300 topics
with Zipf-like popularity, 8 sub-topics each, and noise, every direction drawn with a
power-law spectrum (singular values ~ i^-0.6) in a fixed random basis, so most variance lies
in a few dozen directions. Measured on 100k rows: mean cosine of random pairs 0.34, cosine to
the nearest of sqrt(n/2) k-means centroids 0.80. The clusters are not separated: k-means
borders run through dense regions, the hard case for SemDeDup.

``isotropic`` is the older benchmark's set: ``n / 1000`` random centres plus isotropic noise
(cosine to the centre ~0.7, unrelated rows ~0).

Near-duplicates (``plant_pairs``): a copy of a row turned by an angle whose cosine is uniform in
a given range, along a random direction drawn with the same spectrum as the data
(``anisotropic``: the hard case for the border margin, since the difference then lies in the
directions that separate centroids) or uniformly (``isotropic``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECTRUM_POWER = 0.6


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class ClipLike:
    """The fixed structure of the CLIP-like distribution (one per ``(d, seed)``)."""

    d: int
    spectrum: np.ndarray  # float32 (d,)
    basis: np.ndarray  # float32 (d, d), orthonormal
    mean: np.ndarray  # float32 (d,)
    topics: np.ndarray  # float32 (300, d)
    subtopics: np.ndarray  # float32 (2400, d)
    popularity: np.ndarray  # float64 (300,)

    @classmethod
    def build(cls, d: int = 512, seed: int = 0, n_topics: int = 300, n_sub: int = 8) -> ClipLike:
        rng = np.random.default_rng(seed)
        spectrum = np.arange(1, d + 1, dtype=np.float32) ** -SPECTRUM_POWER
        spectrum /= np.sqrt((spectrum**2).sum())
        basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        obj = cls(d, spectrum, basis, np.empty(d, np.float32), np.empty(0), np.empty(0), np.empty(0))
        obj.mean = obj.directions(rng, 1)[0]
        obj.topics = obj.directions(rng, n_topics)
        obj.subtopics = obj.directions(rng, n_topics * n_sub)
        pop = 1.0 / np.arange(1, n_topics + 1) ** 0.8
        obj.popularity = pop / pop.sum()
        return obj

    def directions(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m unit vectors with the power-law spectrum: float32 (m, d)."""
        g = rng.standard_normal((m, self.d), dtype=np.float32) * self.spectrum
        return unit(g @ self.basis.T)

    def rows(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m rows of the distribution: float32 (m, d), unit length."""
        t = rng.choice(len(self.topics), m, p=self.popularity)
        s = t * (len(self.subtopics) // len(self.topics)) + rng.integers(0, len(self.subtopics) // len(self.topics), m)
        x = 0.62 * self.mean + 0.55 * self.topics[t] + 0.42 * self.subtopics[s] + 0.55 * self.directions(rng, m)
        return unit(x)


def isotropic_rows(rng: np.random.Generator, centres: np.ndarray, m: int) -> np.ndarray:
    """m rows around random ``centres`` with isotropic noise: float32 (m, d)."""
    noise = unit(rng.standard_normal((m, centres.shape[1]), dtype=np.float32))
    return unit(centres[rng.integers(0, len(centres), m)] + noise)


def turn(
    x: np.ndarray, rng: np.random.Generator, cos_low: float, cos_high: float, direction: np.ndarray | None = None
) -> np.ndarray:
    """Each row turned by an angle with cosine uniform in [cos_low, cos_high): float32 (m, d).

    ``direction``: float32 (m, d) directions to turn towards (made orthogonal to the rows);
    default isotropic.
    """
    z = rng.standard_normal(x.shape).astype(np.float64) if direction is None else direction.astype(np.float64)
    x64 = x.astype(np.float64)
    z -= (z * x64).sum(axis=1, keepdims=True) * x64
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    theta = np.arccos(rng.uniform(cos_low, cos_high, len(x)))
    return unit(x64 * np.cos(theta)[:, None] + z * np.sin(theta)[:, None])


def clip_like_chunks(
    n: int, d: int = 512, *, seed: int = 0, chunk: int = 50_000, dup_fraction: float = 0.01
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """CLIP-like rows in chunks, never all in memory, with planted near-duplicates.

    In every chunk a ``dup_fraction`` of rows are replaced by copies of other rows of the same
    chunk, turned (anisotropically) to a cosine uniform in [0.99, 0.9995).

    Yields
    ------
    x : numpy.ndarray
        float32 ``(m, d)``, the chunk's rows.
    pairs : numpy.ndarray
        int64 ``(p, 2)``: (copy, source) global row numbers of the planted pairs.
    """
    dist = ClipLike.build(d, seed)
    for s in range(0, n, chunk):
        rng = np.random.default_rng([seed, s])
        m = min(chunk, n - s)
        x = dist.rows(rng, m)
        p = int(m * dup_fraction)
        rows = rng.permutation(m)[: 2 * p]
        dup, src = rows[:p], rows[p:]
        x[dup] = turn(x[src], rng, 0.99, 0.9995, dist.directions(rng, p))
        yield x, np.stack([dup + s, src + s], axis=1).astype(np.int64)


def isotropic_chunks(
    n: int, d: int = 512, *, seed: int = 0, chunk: int = 50_000, dup_fraction: float = 0.01
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows around ``n / 1000`` random centres (isotropic noise) in chunks, with planted pairs.

    As :func:`clip_like_chunks`, with isotropically turned copies at cosine 0.99-0.9995.
    """
    centres = unit(np.random.default_rng(seed).standard_normal((max(1, n // 1000), d), dtype=np.float32))
    for s in range(0, n, chunk):
        rng = np.random.default_rng([seed, s])
        m = min(chunk, n - s)
        x = isotropic_rows(rng, centres, m)
        p = int(m * dup_fraction)
        rows = rng.permutation(m)[: 2 * p]
        dup, src = rows[:p], rows[p:]
        x[dup] = turn(x[src], rng, 0.99, 0.9995)
        yield x, np.stack([dup + s, src + s], axis=1).astype(np.int64)


def write_parquet_dataset(folder: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One Parquet file per chunk (``id`` int64, ``embedding`` list<float32>); returns the pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    pairs = []
    for i, (x, p) in enumerate(chunks):
        m, d = x.shape
        emb = pa.ListArray.from_arrays(pa.array(np.arange(0, m * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))
        table = pa.table({"id": pa.array(np.arange(start, start + m, dtype=np.int64)), "embedding": emb})
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=m)
        start += m
        pairs.append(p)
    return np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
