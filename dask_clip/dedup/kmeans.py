"""Step 1: spherical (cosine) k-means on a seeded sample of the embeddings, with faiss.

The sample is drawn by global row position (partition lengths first, then a seeded choice of
positions), so the same seed gives the same sample, hence the same centroids, whatever the
partitioning. faiss trains on the sample in the client process; the result is a small
``(k, d)`` array that the assign step ships to every task.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backends
from . import _frame, budget

__all__ = ["Sample", "draw_sample", "fit_centroids", "sample_embeddings", "train_centroids"]

logger = logging.getLogger(__name__)

# faiss' own floor: with fewer training points per centroid it warns that the fit is poor.
MIN_POINTS_PER_CENTROID = 39
# Training-sample size per centroid when max_train_rows is not given; faiss' default
# max_points_per_centroid, beyond which faiss would subsample anyway.
TRAIN_ROWS_PER_CENTROID = 256
# Rows drawn besides the training sample (a 1/16 share, at least this many) to estimate border
# rows on rows k-means did not fit: counted on the training rows, the estimate comes out low
# (0.56 border rows per row on the 10M-row benchmark's set, 0.65 on unseen rows).
HELD_OUT_MIN_ROWS = 4096
HELD_OUT_SHARE = 16


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "semantic dedup needs faiss for k-means: pip install faiss-cpu "
            "(or faiss-gpu), e.g. pip install 'dask-clip[dedup]'"
        ) from err
    return faiss


def normalize_rows(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): float32 ``(n, d)`` -> float32 ``(n, d)``.

    ``inplace=True`` scales a writable float32 ``x`` itself (no copy) and returns it.
    """
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    if inplace and x.dtype == np.float32 and x.flags.writeable:
        x /= norms
        return x
    return (x / norms).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Sample:
    """A seeded sample of the embeddings, and what it stands for.

    Attributes
    ----------
    x : numpy.ndarray
        float32 ``(m, d)``, unit-length rows, in global input order (rows without an
        embedding dropped).
    total_rows : int
        Rows of the input (with or without an embedding).
    drawn_rows : int
        Rows drawn (``m`` plus the drawn rows that had no embedding).
    largest_partition : int
        Rows of the input's largest partition.
    held_out : numpy.ndarray
        float32 ``(h, d)``, unit-length rows drawn besides ``x`` (not trained on), for
        unbiased estimates; ``(0, d)`` when none were asked for or the input has no more rows.
    """

    x: np.ndarray
    total_rows: int
    drawn_rows: int
    largest_partition: int = 0
    held_out: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def scale(self) -> float:
        """Input rows per drawn row."""
        return self.total_rows / max(self.drawn_rows, 1)


def _embedding_dim(df: Any, column: str) -> int:
    """Width of the first usable embedding of a partition (0 if it has none)."""
    series = df[column]
    for head in (series.head(256), series):
        x, _ = backends.embedding_matrix(head, device="cpu")
        if x.shape[0]:
            return int(x.shape[1])
        if len(head) == len(series):
            break
    return 0


def draw_sample(
    ddf: Any,
    embedding_column: str,
    *,
    max_rows: int,
    seed: int = 0,
    max_memory: int | None = None,
    held_out: bool = False,
) -> Sample:
    """A seeded sample of at most ``max_rows`` embeddings, gathered on the client.

    Two passes over ``ddf``: the partition lengths (and the embedding width), then the chosen
    rows of the embedding column only. Rows without an embedding are dropped after sampling,
    so the sample may hold fewer rows than asked. With ``max_memory`` the sample holds at
    most ``max_memory / SAMPLE_COPIES`` bytes of embeddings (:mod:`.budget`). ``held_out``
    also gathers ``Sample.held_out``: ``max_rows / 16`` (at least 4,096) more rows, when the
    input has them. The training rows are the same with or without it.

    Raises
    ------
    ValueError
        If the input is larger than the sample and no sampled row has an embedding.
    """
    import dask

    # the same partition objects for both passes, so the positions match what the gather reads
    parts = ddf[[embedding_column]].to_delayed()
    lengths_dims = dask.compute(
        *((dask.delayed(len)(part), dask.delayed(_embedding_dim)(part, embedding_column)) for part in parts)
    )
    lengths = np.asarray([n for n, _ in lengths_dims], dtype=np.int64)
    dims = [d for _, d in lengths_dims]
    cap = budget.sample_rows_cap(max_memory, int(np.max(np.asarray(dims, dtype=np.int64), initial=0)))
    if cap is not None and cap < max_rows:
        logger.info("k-means sample capped at %d rows by max_memory (asked: %d)", cap, max_rows)
        max_rows = cap
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    held = np.zeros(0, dtype=np.int64)
    if total > max_rows:
        extra = min(total - max_rows, max(HELD_OUT_MIN_ROWS, max_rows // HELD_OUT_SHARE))
        picked = np.random.default_rng(seed).choice(total, size=max_rows + extra, replace=False)
        chosen = np.sort(picked[:max_rows])
        if held_out:
            held = np.sort(picked[max_rows:])
    else:
        chosen = np.arange(total, dtype=np.int64)
    local, local_held = _per_partition(chosen, offsets), _per_partition(held, offsets)

    # one task per partition returns its sampled rows as float32 matrices straight to the client:
    # no worker ever holds the whole sample (a DataFrame .compute() concatenates on one worker)
    pieces = dask.compute(
        *(
            dask.delayed(_sampled_rows)(part, local[p], local_held[p], embedding_column)
            for p, part in enumerate(parts)
            if len(local[p]) or len(local_held[p])
        )
    )
    x = _stack([train for train, _ in pieces])
    x_held = _stack([h for _, h in pieces], dim=x.shape[1])
    del pieces
    if x.shape[0] == 0 and total > max_rows:
        raise ValueError(f"none of the {max_rows} sampled rows has an embedding; raise max_train_rows")
    largest = int(lengths.max(initial=0))
    return Sample(normalize_rows(x, inplace=True), total, len(chosen), largest, normalize_rows(x_held, inplace=True))


def _per_partition(positions: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Sorted global row positions as local positions, one int64 array per partition."""
    bounds = np.searchsorted(positions, offsets)
    return [positions[bounds[p] : bounds[p + 1]] - offsets[p] for p in range(len(offsets) - 1)]


def _stack(pieces: list[np.ndarray], dim: int = 0) -> np.ndarray:
    """The non-empty float32 ``(m_i, d)`` pieces one under another; ``(0, dim)`` if none."""
    pieces = [piece for piece in pieces if piece.shape[0]]
    return np.concatenate(pieces) if pieces else np.zeros((0, dim), np.float32)


def sample_embeddings(ddf: Any, embedding_column: str, *, max_rows: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``max_rows`` embeddings, gathered on the client.

    Two passes over ``ddf``: the partition lengths, then the chosen rows of the embedding
    column only. Rows without an embedding are dropped after sampling, so the sample may
    hold fewer rows than asked.

    Parameters
    ----------
    ddf
        Dask DataFrame (pandas or cuDF partitions) with ``embedding_column``.
    embedding_column
        Column of ``list<float32>`` embeddings.
    max_rows
        Sample size; every row is taken when the input is no larger.
    seed
        Seed of the choice of rows.

    Returns
    -------
    numpy.ndarray
        float32 ``(m, d)``, unit-length rows, in global input order.

    Raises
    ------
    ValueError
        If the input is larger than ``max_rows`` and no sampled row has an embedding.
    """
    return draw_sample(ddf, embedding_column, max_rows=max_rows, seed=seed).x


def _sampled_rows(
    df: Any, positions: np.ndarray, held_positions: np.ndarray, embedding_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings at ``positions`` and at ``held_positions`` of one partition, on the host.

    Returns two float32 ``(m, d)`` matrices, the rows of each that have an embedding.
    """
    x, valid = backends.embedding_matrix(
        df[embedding_column].iloc[np.concatenate([positions, held_positions])], device="cpu"
    )
    x = np.ascontiguousarray(_frame.to_host(x), dtype=np.float32)
    n_train = int(np.asarray(_frame.to_host(valid), dtype=bool)[: len(positions)].sum())
    return x[:n_train], x[n_train:]


def fit_centroids(
    x: np.ndarray,
    n_clusters: int,
    *,
    max_iter: int = 100,
    seed: int = 0,
    gpu: bool = False,
) -> np.ndarray:
    """Spherical k-means with ``faiss.Kmeans(spherical=True)``.

    Parameters
    ----------
    x
        float32 ``(m, d)`` training rows, unit length.
    n_clusters
        Number of centroids ``k``; capped at ``m // 39`` (faiss' minimum number of training
        points per centroid), with a warning.
    max_iter
        At most this many Lloyd iterations (faiss ``niter``; recent faiss stops earlier once the
        clustering has converged).
    seed
        faiss' seed for the initial centroids.
    gpu
        Train on the GPU (needs faiss-gpu).

    Returns
    -------
    numpy.ndarray
        float32 ``(k, d)``, unit-length centroids.
    """
    faiss = _import_faiss()
    m, d = x.shape
    if m == 0:
        raise ValueError("no row has an embedding: nothing to cluster")
    k = n_clusters
    if m < k * MIN_POINTS_PER_CENTROID:
        k = max(1, m // MIN_POINTS_PER_CENTROID)
        warnings.warn(
            f"only {m} training rows for n_clusters={n_clusters}; using {k} clusters "
            f"(at least {MIN_POINTS_PER_CENTROID} rows per centroid)",
            UserWarning,
            stacklevel=3,
        )
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        return normalize_rows(c if np.linalg.norm(c) > 0 else x[:1].copy())
    km = faiss.Kmeans(
        d,
        k,
        niter=max_iter,
        spherical=True,
        seed=seed,
        gpu=gpu,
        verbose=False,
        # we sampled already; stop faiss from subsampling (and warning) again
        max_points_per_centroid=max(TRAIN_ROWS_PER_CENTROID, -(-m // k)),
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return normalize_rows(np.asarray(km.centroids, dtype=np.float32))


def faiss_has_gpu() -> bool:
    """Whether the installed faiss can train on a GPU that is present."""
    faiss = _import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def train_centroids(
    ddf: Any,
    embedding_column: str,
    n_clusters: int,
    *,
    max_iter: int = 100,
    seed: int = 0,
    max_train_rows: int | None = None,
    gpu: bool | None = None,
    max_memory: int | None = None,
    sample: Sample | None = None,
) -> np.ndarray:
    """Sample (:func:`draw_sample`) then fit (:func:`fit_centroids`).

    ``max_train_rows`` defaults to ``256 * n_clusters``, capped by ``max_memory`` (bytes; an
    explicit ``max_train_rows`` is taken as given: the sample is held by the client, not a task);
    ``gpu=None`` uses faiss-gpu when a GPU is visible to the client; ``sample``: train on this
    one instead of drawing. Returns float32 ``(k, d)`` unit-length centroids (a ``(1, 1)``
    placeholder, with a warning, when no row has an embedding).
    """
    if sample is None:
        cap = max_memory if max_train_rows is None else None
        if max_train_rows is None:
            max_train_rows = TRAIN_ROWS_PER_CENTROID * n_clusters
        sample = draw_sample(ddf, embedding_column, max_rows=max_train_rows, seed=seed, max_memory=cap)
    x = sample.x
    if x.shape[0] == 0:  # every row was looked at: nothing to cluster, every row will be kept
        warnings.warn("no row has an embedding: nothing to deduplicate", UserWarning, stacklevel=2)
        return np.zeros((1, 1), np.float32)
    if gpu is None:
        gpu = faiss_has_gpu()
    return fit_centroids(x, n_clusters, max_iter=max_iter, seed=seed, gpu=gpu)
