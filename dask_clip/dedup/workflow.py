"""SemDeDup on a Dask DataFrame: k-means, assign, cluster shuffle, blocked pairwise, join back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .. import backends
from ..validation import KEEP_RULES, SHUFFLE_METHODS, check_choice, check_eps, check_int
from . import _frame, _join, assign, kmeans, pairwise

__all__ = ["OUTPUT_COLUMNS", "is_duplicate", "semantic_dedup"]

OUTPUT_COLUMNS = ("cluster", "max_similarity", "duplicate", "duplicate_of")


def is_duplicate(max_similarity: Any, eps: float) -> Any:
    """``max_similarity >= 1 - eps`` (NaN/null -> False), in float64 so every caller agrees."""
    return (max_similarity.astype("float64") >= 1.0 - eps).fillna(False)


def check_shuffle_method(shuffle_method: Any) -> None:
    """ValueError unless ``shuffle_method`` is None or one of Dask's methods."""
    if shuffle_method is not None:
        check_choice("shuffle_method", shuffle_method, SHUFFLE_METHODS)


def check_dask_frame(ddf: Any) -> None:
    """TypeError unless ``ddf`` is a Dask DataFrame."""
    if not (
        hasattr(ddf, "map_partitions")
        and hasattr(ddf, "npartitions")
        and hasattr(getattr(ddf, "_meta", None), "columns")
    ):
        raise TypeError(
            f"expected a dask DataFrame (dask.dataframe or dask_cudf), not {type(ddf).__name__}; "
            "wrap a pandas DataFrame with dask.dataframe.from_pandas"
        )


def check_embedding_dtype(meta: Any, column: str) -> None:
    """TypeError if the embedding column cannot hold lists of floats."""
    _frame.check_dtype(
        meta,
        column,
        lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t),
        "list<float32>: pd.ArrowDtype(pa.list_(pa.float32())), cudf.ListDtype('float32') or object arrays",
        ". A string dtype here usually means dask's 'dataframe.convert-string' turned arrays "
        "into strings: read Parquet with dtype_backend='pyarrow'.",
    )


def semantic_dedup(
    ddf: Any,
    *,
    embedding_column: str = "embedding",
    n_clusters: int = 1000,
    eps: float = 0.01,
    which_to_keep: str = "hard",
    seed: int = 0,
    max_iter: int = 100,
    max_train_rows: int | None = None,
    block_size: int = pairwise.PAIRWISE_BLOCK_SIZE,
    id_column: str | None = None,
    npartitions: int | None = None,
    centroids: np.ndarray | None = None,
    device: str | None = None,
    shuffle_method: str | None = None,
) -> Any:
    """Flag semantic near-duplicates (SemDeDup) in a Dask DataFrame of embeddings.

    Spherical k-means on a seeded sample (faiss), nearest centroid for every row, a shuffle
    that gathers each cluster's rows, then in every cluster the rows are ranked by the keep
    rule and each row gets its largest cosine similarity to a row ranked ahead of it, in
    ``block_size`` tiles. The k-means runs now (two passes over ``ddf``: partition lengths,
    then the sample); the rest is lazy. Persist ``ddf`` or read it from Parquet first, or those
    passes recompute whatever produced it.

    Parameters
    ----------
    ddf
        Dask DataFrame with pandas or cuDF partitions.
    embedding_column
        ``list<float32>`` column (``pd.ArrowDtype(pa.list_(pa.float32()))`` or
        ``cudf.ListDtype("float32")``), one ``(d,)`` vector per row; null rows are allowed.
        Vectors are L2-normalised before use.
    n_clusters
        k-means ``k`` (NeMo Curator's ``n_clusters``); capped at one cluster per 39 training rows.
    eps
        A row is a ``duplicate`` when ``max_similarity >= 1 - eps``; in [0, 1].
    which_to_keep
        Keep rule, the order in which a cluster's rows are kept: ``"hard"`` (default, as the
        paper: least similar to the centroid first), ``"easy"`` (most similar first) or
        ``"random"`` (a seeded hash of the embedding). Ties go to the earlier input row.
    seed
        Seed of the training sample, of faiss' initialisation and of ``"random"``.
    max_iter
        k-means iterations (faiss ``niter``).
    max_train_rows
        Training sample size; default ``256 * n_clusters`` (faiss' ``max_points_per_centroid``).
    block_size
        Tile side of the pairwise step (NeMo Curator's ``pairwise_batch_size``).
    id_column
        Column whose value names a row in ``duplicate_of``; default: the index label.
    npartitions
        Partitions of the cluster shuffle; default ``ddf.npartitions``.
    centroids
        float32 ``(k, d)`` centroids to reuse instead of training (e.g. from
        :func:`dask_clip.dedup.kmeans.train_centroids`).
    device
        torch device of the assign and pairwise steps; default CPU for pandas partitions and
        CUDA for cuDF partitions.
    shuffle_method
        Dask's shuffle method (``"p2p"``, ``"tasks"``, ``"disk"``); default: Dask's choice.

    Returns
    -------
    dask DataFrame
        The input rows (same index, columns, row order and partitions) plus ``cluster``
        (int32, -1 for rows without an embedding), ``max_similarity`` (float32: cosine
        similarity to the most similar row ranked ahead in its cluster; NaN for the first row
        of a cluster and for rows without an embedding), ``duplicate`` (bool) and
        ``duplicate_of`` (the id of that most similar row; null where there is none).
    """
    check_dask_frame(ddf)
    meta = ddf._meta
    _frame.require_column(meta, embedding_column, "embedding_column")
    if id_column is not None:
        _frame.require_column(meta, id_column, "id_column")
    check_embedding_dtype(meta, embedding_column)
    clash = [c for c in OUTPUT_COLUMNS if c in meta.columns]
    if clash:
        raise ValueError(f"input already has output columns {clash}; drop or rename them first")
    check_int("n_clusters", n_clusters, 1)
    eps = check_eps(eps)
    check_choice("which_to_keep", which_to_keep, KEEP_RULES)
    check_int("seed", seed, 0)
    check_int("max_iter", max_iter, 1)
    check_int("max_train_rows", max_train_rows, 1, allow_none=True)
    check_int("block_size", block_size, 1)
    check_int("npartitions", npartitions, 1, allow_none=True)
    check_shuffle_method(shuffle_method)
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be a torch device string such as 'cpu' or 'cuda', not {device!r}")
    if centroids is not None:
        centroids = np.asarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be a (k, d) array, not shape {centroids.shape}")
        centroids = kmeans.normalize_rows(centroids)
    _frame.row_divisions(ddf.npartitions)  # raises if there are too many partitions
    ddf = _frame.settle_partitions(ddf)

    if centroids is None:
        centroids = kmeans.train_centroids(
            ddf,
            embedding_column,
            n_clusters,
            max_iter=max_iter,
            seed=seed,
            max_train_rows=max_train_rows,
            gpu=None if device is None else device.startswith("cuda"),
        )
    return cluster_dedup(
        ddf,
        centroids,
        embedding_column=embedding_column,
        eps=eps,
        which_to_keep=which_to_keep,
        seed=seed,
        block_size=block_size,
        id_column=id_column,
        npartitions=npartitions,
        device=device,
        shuffle_method=shuffle_method,
    )


def cluster_dedup(
    ddf: Any,
    centroids: np.ndarray,
    *,
    embedding_column: str,
    eps: float,
    which_to_keep: str,
    seed: int,
    block_size: int,
    id_column: str | None,
    npartitions: int | None,
    device: str | None,
    shuffle_method: str | None = None,
) -> Any:
    """The lazy part of :func:`semantic_dedup`, given centroids (arguments already checked)."""
    import dask

    assign_kw: dict[str, Any] = dict(
        embedding_column=embedding_column, device=device, id_column=id_column, which_to_keep=which_to_keep, seed=seed
    )
    payload = ddf.map_partitions(
        assign.assign_partition,
        # one graph key for the centroids instead of a copy inside every task
        centroids=dask.delayed(centroids, traverse=False),
        **assign_kw,
        meta=assign.assign_partition(ddf._meta, centroids, **assign_kw),
        enforce_metadata=False,
    )
    clustered = payload.shuffle(on="cluster", npartitions=npartitions or ddf.npartitions, shuffle_method=shuffle_method)
    step: dict[str, Any] = dict(device=device, block_size=block_size)
    scored = clustered.map_partitions(
        pairwise.dedup_partition,
        **step,
        meta=pairwise.dedup_partition(payload._meta, **step),
        enforce_metadata=False,
    )
    id_dtype = payload._meta["_id"].dtype
    return _join.join_back(ddf, scored, _attach, eps=eps, id_dtype=id_dtype, shuffle_method=shuffle_method)


def _attach(df: Any, res: Any, eps: float, id_dtype: Any = None) -> Any:
    """Input partition plus its rows' results (rows absent from ``res`` have no embedding)."""
    r = _join.by_position(df, res)
    max_sim = r["max_similarity"].astype("float32")
    return backends.with_columns(
        df,
        {
            "cluster": r["cluster"].fillna(-1).astype("int32"),
            "max_similarity": max_sim,
            "duplicate": is_duplicate(max_sim, eps),
            "duplicate_of": _frame.restore_dtype(r["duplicate_of"], id_dtype),
        },
    )
