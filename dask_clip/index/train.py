"""Step 2: count the rows, draw a seeded sample of embeddings, train the empty faiss index.

The sample is a Bernoulli draw per partition (``numpy.random.default_rng([seed, partition])``)
over the embedding column only, so one pass gathers about ``rows`` vectors without knowing
partition lengths first; the client then keeps a seeded subset of exactly ``rows`` where it got
more. The trained, still empty, index is written to ``_build/trained.faiss``, which every
add task reads: the quantiser is shared by all shards, so they merge.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = [
    "count_rows",
    "embedding_matrix",
    "import_faiss",
    "new_index",
    "sample_embeddings",
    "train_index",
]

logger = logging.getLogger(__name__)
# Oversampling of the Bernoulli draw, so that it rarely comes back with fewer than asked.
_OVERSAMPLE = 1.1


def import_faiss() -> Any:
    """faiss, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval index needs faiss: pip install 'dask-clip[index]' (faiss-cpu), or faiss-gpu"
        ) from err
    return faiss


def embedding_matrix(series: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """The usable embeddings of one partition's embedding column, unit length.

    Parameters
    ----------
    series
        A pandas (or cuDF, converted) ``list<float32>`` column.

    Returns
    -------
    x : numpy.ndarray
        float32 (M, D), the rows with a usable embedding, in order, L2-normalised.
    valid : numpy.ndarray
        bool (N,): the row has an embedding that is not null, all finite and not all zero.
    nulls : int
        Rows whose embedding is null (the others of ``~valid`` are non-finite or zero).
    """
    from ..columns import embeddings_to_numpy

    if hasattr(series, "to_pandas"):  # cuDF: the index is built on the CPU
        series = series.to_pandas()
    nulls = int(series.isna().sum())
    x = embeddings_to_numpy(series)
    if x.shape[0] == 0:
        return np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32), np.zeros(0, bool), 0
    norms = np.linalg.norm(x, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    x = x[valid] / norms[valid, None]
    return np.ascontiguousarray(x, dtype=np.float32), valid, nulls


def count_rows(source: Any, embedding_column: str) -> int:
    """Rows of the input: from Parquet footers for local paths (a list), else one pass over
    the Dask DataFrame's column."""
    if isinstance(source, list):
        import pyarrow.dataset as ds

        return int(sum(ds.dataset(path, format="parquet").count_rows() for path in source))
    return int(source[embedding_column].map_partitions(len, meta=(None, "int64")).compute().sum())


def _bernoulli(df: Any, probability: float, seed: int, partition_info: dict | None = None) -> np.ndarray:
    number = partition_info["number"] if partition_info is not None else 0
    column = df.iloc[:, 0]
    rng = np.random.default_rng([seed, number])
    chosen = rng.random(len(column)) < probability
    x, _, _ = embedding_matrix(column[chosen])
    return x


def sample_embeddings(ddf: Any, embedding_column: str, rows: int, n_rows: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of about ``rows`` usable, unit-length embeddings, gathered on the client.

    Parameters
    ----------
    ddf
        Dask DataFrame with ``embedding_column``.
    embedding_column
        Its ``list<float32>`` column.
    rows
        Sample size wanted.
    n_rows
        Rows of ``ddf`` (nulls included): sets the draw probability.
    seed
        Seed of the draw (with each partition's number).

    Returns
    -------
    numpy.ndarray
        float32 (m, D) with ``m <= rows``; fewer when rows lack embeddings.
    """
    import dask

    probability = min(1.0, _OVERSAMPLE * rows / max(n_rows, 1))
    sub = ddf[[embedding_column]]
    parts = [dask.delayed(_bernoulli)(p, probability, seed, {"number": i}) for i, p in enumerate(sub.to_delayed())]
    arrays = [a for a in dask.compute(*parts) if a.shape[0]]
    if not arrays:
        return np.zeros((0, 0), np.float32)
    dims = {a.shape[1] for a in arrays}
    if len(dims) > 1:
        raise ValueError(f"embeddings have different lengths: {sorted(dims)}")
    x = np.concatenate(arrays)
    if x.shape[0] > rows:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=rows, replace=False))
        x = x[keep]
    return x


def new_index(index_key: str, dim: int) -> Any:
    """An empty faiss index for inner product: ``IndexIDMap2(IndexFlatIP)`` for ``"Flat"``
    (ids kept, rows reconstructable), ``index_factory(dim, key, METRIC_INNER_PRODUCT)`` else."""
    faiss = import_faiss()
    if index_key == "Flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    return faiss.index_factory(dim, index_key, faiss.METRIC_INNER_PRODUCT)


def train_index(index_key: str, sample: np.ndarray, seed: int = 0) -> Any:
    """Train an empty index of ``index_key`` on ``sample`` (float32 (m, D), unit length).

    k-means of the coarse quantiser and of the product quantiser are seeded with ``seed``.

    Raises
    ------
    ValueError
        Too few rows to train ``index_key`` (fewer than 39 per list).
    """
    faiss = import_faiss()
    index = new_index(index_key, sample.shape[1])
    if index.is_trained:
        return index
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVFPQ etc.: their own fields
    if sample.shape[0] < ivf.nlist:
        raise ValueError(
            f"{sample.shape[0]} training rows for {ivf.nlist} lists in {index_key!r}; "
            "choose fewer lists (or index_key='auto')"
        )
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = max(256, -(-sample.shape[0] // ivf.nlist))  # we sampled already
    if hasattr(ivf, "pq"):
        ivf.pq.cp.seed = seed
    if hasattr(ivf, "do_polysemous_training"):
        # index_factory turns it on for IVF-PQ; it only serves Hamming-filtered search, which
        # we never use, and takes ~100x longer than the PQ training itself
        ivf.do_polysemous_training = False
    logger.info("training %s on %d rows", index_key, sample.shape[0])
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index
