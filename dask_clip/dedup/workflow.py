"""SemDeDup on a Dask DataFrame: k-means, assign, cluster shuffle, blocked pairwise, join back."""

from __future__ import annotations

import logging
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .. import backends
from ..validation import KEEP_RULES, SHUFFLE_METHODS, check_choice, check_eps, check_int, check_memory, with_settings
from . import _frame, _join, assign, border, border_estimate, budget, kmeans, pairwise

__all__ = ["DEFAULT_BORDER_MARGIN", "OUTPUT_COLUMNS", "DedupConfig", "dedup_config", "is_duplicate", "semantic_dedup"]

logger = logging.getLogger(__name__)

# Fraction of the guaranteed border margin (see dedup/border.py): 1.0 finds every pair within eps.
DEFAULT_BORDER_MARGIN = 1.0
# Warn when the k-means sample shows more border rows than rows: the cross-border tests then
# outnumber the plain step's (each border row meets a whole neighbouring cluster).
BORDER_ROWS_WARNING = 1.0

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


def check_border_margin(value: Any) -> float:
    """A border margin fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"border_margin must be a float in (0, 1], not {type(value).__name__}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"border_margin must be in (0, 1] (1: every pair within eps is found), not {value}; "
            "pass border_aware=False for plain SemDeDup"
        )
    return float(value)


@dataclass(frozen=True)
class DedupConfig:
    """The settings of :func:`semantic_dedup` (one object instead of a copied signature;
    checked by :func:`prepare`). The attributes are :func:`semantic_dedup`'s arguments of the
    same names, with the same defaults."""

    embedding_column: str = "embedding"
    n_clusters: int = 1000
    eps: float = 0.01
    which_to_keep: str = "hard"
    seed: int = 0
    max_iter: int = 100
    max_train_rows: int | None = None
    block_size: int = pairwise.PAIRWISE_BLOCK_SIZE
    id_column: str | None = None
    npartitions: int | None = None
    device: str | None = None
    shuffle_method: str | None = None
    border_aware: bool = True
    border_margin: float = DEFAULT_BORDER_MARGIN
    max_memory: int | str | None = None


def dedup_config(config: DedupConfig | None = None, **settings: Any) -> DedupConfig:
    """``config`` (default: the defaults) with ``settings`` (the keyword arguments) on top.

    Raises
    ------
    TypeError
        A setting :class:`DedupConfig` does not have (the message lists them).
    """
    return with_settings(DedupConfig, config, settings, what="dedup arguments", name="config")


def semantic_dedup(
    ddf: Any,
    config: DedupConfig | None = None,
    *,
    centroids: np.ndarray | None = None,
    **settings: Any,
) -> Any:
    """Flag semantic near-duplicates (SemDeDup) in a Dask DataFrame of embeddings.

    Spherical k-means on a seeded sample (faiss), nearest centroid for every row, a shuffle
    that gathers each cluster's rows, then in every cluster the rows are ranked by the keep
    rule and each row gets its largest cosine similarity to a row ranked ahead of it, in
    ``block_size`` tiles. Border-aware (the default), rows close to another centroid are also
    compared with that cluster's rows, within a margin derived from ``eps`` that misses no
    pair with cosine >= 1 - eps (:mod:`dask_clip.dedup.border`). The k-means runs now (two
    passes over ``ddf``: partition lengths, then the sample); the rest is lazy. Persist ``ddf``
    or read it from Parquet first, or those passes recompute whatever produced it.

    Parameters
    ----------
    ddf
        Dask DataFrame with pandas or cuDF partitions.
    config
        The settings below as one :class:`DedupConfig`; keyword arguments override it.
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
        Training sample size; default ``256 * n_clusters`` (faiss' ``max_points_per_centroid``),
        capped by ``max_memory`` (a given value is not capped: the client holds the sample).
        Fewer rows per centroid give rougher centroids and more border rows.
    block_size
        Tile side of the pairwise step (NeMo Curator's ``pairwise_batch_size``).
    id_column
        Column whose value names a row in ``duplicate_of``; default: the index label.
    npartitions
        Partitions of the cluster shuffle; default ``ddf.npartitions`` (more where
        ``max_memory`` needs them).
    centroids
        float32 ``(k, d)`` centroids to reuse instead of training (e.g. from
        :func:`dask_clip.dedup.kmeans.train_centroids`).
    device
        torch device of the assign and pairwise steps; default CPU for pandas partitions and
        CUDA for cuDF partitions.
    shuffle_method
        Dask's shuffle method (``"p2p"``, ``"tasks"``, ``"disk"``); default: Dask's choice.
    border_aware
        Also compare rows close to another centroid with that cluster (default). ``False``:
        plain SemDeDup, rows compared only within their cluster, as the paper and NeMo
        Curator (identical results to theirs for the same centroids).
    border_margin
        Fraction ``f`` in (0, 1] of the guaranteed margin: 1 finds every pair with cosine
        >= 1 - eps; ``f`` guarantees pairs with cosine >= 1 - f² eps, for less work.
    max_memory
        Budget of one task's dedup data, bytes or a string such as ``"4GiB"``
        (:mod:`dask_clip.dedup.budget`): caps the k-means sample, sizes the assign blocks,
        packs clusters into shuffle partitions of at most a quarter of it, and raises
        :class:`~dask_clip.dedup.budget.ClusterTooLargeError` naming a cluster too large for
        it. Default: no budget (a hash shuffle on ``cluster``).

    Returns
    -------
    dask DataFrame
        The input rows (same index, columns, row order and partitions) plus ``cluster``
        (int32, -1 for rows without an embedding), ``max_similarity`` (float32: cosine
        similarity to the most similar row ranked ahead in its cluster, or across a border
        when that one is a duplicate; NaN for the first row of a cluster and for rows without
        an embedding), ``duplicate`` (bool) and ``duplicate_of`` (the id of that most similar
        row; null where there is none).
    """
    plan = prepare(ddf, config, centroids=centroids, **settings)
    return attach_results(plan, cluster_results(plan))


@dataclass
class DedupPlan:
    """Everything the lazy steps need, once the arguments are checked and k-means has run."""

    ddf: Any
    centroids: np.ndarray
    embedding_column: str
    eps: float
    which_to_keep: str
    seed: int
    block_size: int
    id_column: str | None
    npartitions: int
    device: str | None
    shuffle_method: str | None
    border_scale: float | None = None
    max_memory: int | None = None
    shuffle_plan: budget.ShufflePlan | None = None
    assign_block_rows: int = assign.ASSIGN_BLOCK_ROWS
    sketch_basis: np.ndarray | None = None
    border_embeddings: bool = False
    single_task: bool = False
    border_one_way: bool = False
    info: dict = field(default_factory=dict)

    @property
    def border_aware(self) -> bool:
        return self.border_scale is not None


def prepare(
    ddf: Any,
    config: DedupConfig | None = None,
    *,
    centroids: np.ndarray | None = None,
    **settings: Any,
) -> DedupPlan:
    """Check the arguments of :func:`semantic_dedup`, run k-means, plan the shuffle."""
    c = dedup_config(config, **settings)
    embedding_column = c.embedding_column
    n_clusters = c.n_clusters
    eps = c.eps
    which_to_keep = c.which_to_keep
    seed = c.seed
    max_iter = c.max_iter
    max_train_rows = c.max_train_rows
    block_size = c.block_size
    id_column = c.id_column
    npartitions = c.npartitions
    device = c.device
    shuffle_method = c.shuffle_method
    border_aware = c.border_aware
    border_margin = c.border_margin
    max_memory = c.max_memory
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
    if not isinstance(border_aware, bool):
        raise TypeError(f"border_aware must be True or False, not {border_aware!r}")
    border_margin = check_border_margin(border_margin)
    max_memory = check_memory("max_memory", max_memory)
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be a torch device string such as 'cpu' or 'cuda', not {device!r}")
    if centroids is not None:
        centroids = np.asarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be a (k, d) array, not shape {centroids.shape}")
        centroids = kmeans.normalize_rows(centroids)
    _frame.row_divisions(ddf.npartitions)  # raises if there are too many partitions
    ddf = _frame.settle_partitions(ddf)

    sample = None
    if centroids is None or max_memory is not None:
        rows = max_train_rows or kmeans.TRAIN_ROWS_PER_CENTROID * (n_clusters if centroids is None else len(centroids))
        # max_memory caps the default sample only: an explicit max_train_rows is the caller's choice
        cap = max_memory if max_train_rows is None else None
        estimate = border_aware or max_memory is not None  # border rows counted on held-out rows
        sample = kmeans.draw_sample(ddf, embedding_column, max_rows=rows, seed=seed, max_memory=cap, held_out=estimate)
    if centroids is None:
        centroids = kmeans.train_centroids(
            ddf,
            embedding_column,
            n_clusters,
            max_iter=max_iter,
            seed=seed,
            gpu=None if device is None else device.startswith("cuda"),
            sample=sample,
        )
    k = centroids.shape[0]
    plan = DedupPlan(
        ddf=ddf,
        centroids=centroids,
        embedding_column=embedding_column,
        eps=eps,
        which_to_keep=which_to_keep,
        seed=seed,
        block_size=block_size,
        id_column=id_column,
        npartitions=npartitions or ddf.npartitions,
        device=device,
        shuffle_method=shuffle_method,
        max_memory=max_memory,
    )
    if border_aware:
        plan.border_scale = border.margin_scale(eps, border_margin)
        plan.sketch_basis = border.sketch_basis(centroids)  # once here, not in every task (k may be 50,000)
    if border_aware or max_memory is not None:
        plan.assign_block_rows = budget.assign_block_rows(max_memory, k, assign.ASSIGN_BLOCK_ROWS)
    if sample is not None:
        plan.info["sample_rows"] = int(sample.x.shape[0])
    usable = sample is not None and sample.x.shape[0] > 0 and sample.x.shape[1] == centroids.shape[1]
    if sample is not None and usable and (border_aware or max_memory is not None):
        own, guests = estimate_block_counts(sample, centroids, plan.border_scale)
        per_row = float(guests.sum() / max(own.sum(), 1))
        plan.info["estimated_border_rows_per_row"] = per_row
        if border_aware and per_row > BORDER_ROWS_WARNING:
            width = border.sketch_dims(centroids.shape[1]) + 1
            warnings.warn(
                f"border-aware dedup: about {per_row:.2f} border rows per row (estimated from the k-means "
                f"sample), each shipped to its neighbouring clusters as a {width}-value "
                "sketch and tested against their rows there: the cross-border step costs more than the "
                "plain one. Centroids with fewer rows near their borders cost less (raise max_train_rows or "
                f"max_iter); border_margin={border_margin:g} -> 0.5 guarantees pairs within eps/4 for less; "
                "border_aware=False is plain SemDeDup.",
                UserWarning,
                stacklevel=3,
            )
        held = sample.held_out if sample.held_out.shape[0] else sample.x
        if border_aware and max_memory is None and plan.border_scale is not None:
            plan.border_one_way = one_way_pays_off(plan, held, sample.x)
        if plan.border_scale is not None and plan.sketch_basis is not None:
            # sketches only where the sketch bound prunes: else the candidates would outweigh them
            cands = border_estimate.candidates_per_border_row(
                held,
                sample.x,
                centroids,
                plan.border_scale,
                plan.sketch_basis,
                border.duplicate_threshold(eps),
                own_weight=sample.scale,
            )
            plan.border_embeddings = not border.sketch_pays_off(cands)
            plan.info["estimated_candidates_per_border_row"] = cands
        if border_aware and max_memory is not None:
            check_border_payload(plan, sample, per_row, max_memory)
        if max_memory is not None:
            plan.shuffle_plan = budget.plan_shuffle(
                own,
                guests,
                scale=sample.scale,
                dim=centroids.shape[1],
                max_memory=max_memory,
                min_partitions=plan.npartitions,
            )
            plan.info["shuffle_partitions"] = plan.shuffle_plan.npartitions
            logger.info(
                "dedup shuffle plan: %d partitions of at most %s of embeddings; %.3f border rows per row (sample)",
                plan.shuffle_plan.npartitions,
                budget.format_bytes(max_memory / budget.PAIRWISE_COPIES),
                per_row,
            )
    elif border_aware and plan.sketch_basis is not None:  # centroids given: estimate on one partition
        plan.border_embeddings = not border.sketch_pays_off(first_partition_estimate(plan))
    if sample is not None:
        plan.info["estimated_rows"] = int(sample.total_rows)
    plan.single_task = runs_in_one_task(plan)
    return plan


def runs_in_one_task(plan: DedupPlan) -> bool:
    """Whether the input is small enough for the pairwise step in one task, without shuffles.

    From the row count the plan already has (the k-means sample's partition lengths, or the
    first partition's length times the partitions where the centroids were given to a
    border-aware run; a plain run with given centroids reads nothing before the graph and
    always shuffles): the embeddings' bytes against ``dask_clip.dedup.single-task-bytes``.
    Never with a memory budget smaller than four times that (the task holds every row, and the
    border rows, at once).
    """
    from .. import config

    limit = int(config.get("dedup.single-task-bytes") or 0)
    rows = plan.info.get("estimated_rows")
    if limit <= 0 or rows is None:
        return False
    size = int(rows) * plan.centroids.shape[1] * 4
    if plan.max_memory is not None and 4 * size > plan.max_memory:
        return False
    return size <= limit


def first_partition_estimate(plan: DedupPlan) -> float:
    """:func:`.border_estimate.candidates_per_border_row` on the first partition (no k-means sample drawn).

    One partition's embedding column is read: a cheap look at the data when the centroids
    are given. The estimate only chooses how border rows travel; either way is exact.
    """
    ddf = plan.ddf
    part = ddf.partitions[0][[plan.embedding_column]].compute()
    plan.info["estimated_rows"] = len(part) * ddf.npartitions
    k = plan.centroids.shape[0]
    rng = np.random.default_rng(plan.seed)
    wanted = border_estimate.ESTIMATE_ROWS + border_estimate.ESTIMATE_ROWS_PER_CENTROID * k
    pick = np.sort(rng.permutation(len(part))[:wanted])
    x, _ = backends.embedding_matrix(backends.take_rows(part, pick)[plan.embedding_column], device="cpu")
    if x.shape[0] == 0 or x.shape[1] != plan.centroids.shape[1]:
        return 0.0
    if plan.border_scale is None or plan.sketch_basis is None:
        return 0.0
    x = x.numpy()[rng.permutation(x.shape[0])]
    own = x[border_estimate.ESTIMATE_ROWS :] if x.shape[0] > 2 * border_estimate.ESTIMATE_ROWS else x
    if plan.max_memory is None:
        plan.border_one_way = one_way_pays_off(plan, x[: border_estimate.ESTIMATE_ROWS], own)
    estimate = border_estimate.candidates_per_border_row(
        x[: border_estimate.ESTIMATE_ROWS],
        own,
        plan.centroids,
        plan.border_scale,
        plan.sketch_basis,
        border.duplicate_threshold(plan.eps),
        own_weight=len(part) * ddf.npartitions / max(len(own), 1),
    )
    plan.info["estimated_candidates_per_border_row"] = estimate
    return estimate


# The one-way rule of :mod:`.border` is taken where it tests at most this fraction of the
# (border row, own row) pairs the two-way rule would (estimated on a sample).
ONE_WAY_FRACTION = 0.8


def one_way_pays_off(plan: DedupPlan, rows: np.ndarray, own_rows: np.ndarray) -> bool:
    """Whether border rows should go one way at twice the margin (:mod:`.border`), from a sample.

    Counts, on ``rows``, the border rows each cluster would receive by either rule, weighs
    them by the cluster's own rows (counted on ``own_rows``): the pairs the border step tests.
    Both rules are exact; they differ in how many pairs they test and rows they move. Records
    both estimates (per row, relative to nothing: only their ratio matters) in ``plan.info``.
    """
    if plan.border_scale is None or rows.shape[0] == 0 or own_rows.shape[0] == 0:
        return False
    own, _ = sample_block_counts(own_rows, plan.centroids, None)
    _, both = sample_block_counts(rows, plan.centroids, plan.border_scale)
    _, one = sample_block_counts(rows, plan.centroids, 2.0 * plan.border_scale, one_way=True)
    two_way, one_way = float((own * both).sum()), float((own * one).sum())
    plan.info["border_pairs_two_way_vs_one_way"] = (two_way, one_way)
    return one_way <= ONE_WAY_FRACTION * two_way


def _border_kw(plan: DedupPlan) -> dict[str, Any]:
    """The assign step's border arguments: the margin scale (doubled one way), how rows travel."""
    scale = plan.border_scale if plan.border_scale is not None else 0.0
    return {
        "border_scale": 2.0 * scale if plan.border_one_way else scale,
        "with_embeddings": plan.border_embeddings,
        "one_way": plan.border_one_way,
    }


def check_border_payload(plan: DedupPlan, sample: kmeans.Sample, per_row: float, max_memory: int) -> None:
    """:class:`.budget.BorderTooWideError` if the largest input partition's assign payload exceeds the budget."""
    partition_rows = sample.largest_partition
    dim = plan.centroids.shape[1]
    if plan.border_scale is None or budget.assign_payload_bytes(partition_rows, per_row, dim) <= max_memory:
        return
    raise budget.BorderTooWideError.build(
        partition_rows,
        per_row,
        dim,
        max_memory,
        half_margin_rows_per_row=border_rows_per_row(sample, plan.centroids, plan.border_scale / 2),
        sample_rows_per_centroid=sample.x.shape[0] / plan.centroids.shape[0],
    )


def estimate_block_counts(
    sample: kmeans.Sample, centroids: np.ndarray, scale: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled rows per cluster, and border rows per cluster scaled to the same sample.

    Border rows are counted on the sample's held-out rows when it has them (k-means fitted the
    training rows, which sit closer to their centroids than unseen rows do), then scaled to the
    training sample's size; otherwise on the training rows.

    Returns
    -------
    own : numpy.ndarray
        int64 ``(k,)``, training rows nearest to each cluster.
    guests : numpy.ndarray
        float64 ``(k,)``, border rows each cluster receives, per the same number of rows.
    """
    held = sample.held_out
    if scale is None or held.shape[0] == 0:
        own, guests = sample_block_counts(sample.x, centroids, scale)
        return own, guests.astype(np.float64)
    own, _ = sample_block_counts(sample.x, centroids, None)
    _, held_guests = sample_block_counts(held, centroids, scale)
    return own, held_guests * (sample.x.shape[0] / held.shape[0])


def border_rows_per_row(sample: kmeans.Sample, centroids: np.ndarray, scale: float) -> float:
    """Border rows per row at ``scale``, counted on the held-out rows if the sample has them."""
    rows = sample.held_out if sample.held_out.shape[0] else sample.x
    _, guests = sample_block_counts(rows, centroids, scale)
    return float(guests.sum() / max(rows.shape[0], 1))


def sample_block_counts(
    x: np.ndarray, centroids: np.ndarray, scale: float | None, *, one_way: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the sample nearest to each cluster, and border rows each cluster would receive
    (``one_way``: by the one-way rule of :mod:`.border`, ``scale`` doubled by the caller).

    Returns two int64 ``(k,)`` arrays.
    """
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    k = c.shape[0]
    if scale is None:
        labels, _ = assign.nearest_centroid(xt, c)
        hosts = torch.empty(0, dtype=torch.int64)
    else:
        block = budget.assign_block_rows(None, k, assign.ASSIGN_BLOCK_ROWS)
        labels, _, (_, hosts, _) = assign.nearest_centroid_and_border(xt, c, scale, block_rows=block, one_way=one_way)
    own = np.bincount(labels.numpy().astype(np.int64), minlength=k)
    guests = np.bincount(hosts.numpy().astype(np.int64), minlength=k)
    return own, guests


def cluster_results(plan: DedupPlan) -> Any:
    """The per-row results, lazily: assign, cluster shuffle, pairwise, routed to input partitions.

    Returns a Dask DataFrame indexed by ``_row``, partition ``p`` holding the results of input
    partition ``p`` (in border-aware runs, possibly several per row: :func:`attach_results`
    reduces them). It is small (tens of bytes per row): persist it to read the input only once
    more when attaching (what :func:`~dask_clip.dedup.dedup_parquet` does).
    """
    import dask

    if plan.single_task:
        return one_task_results(plan)
    if plan.border_aware:
        return _join.route(plan.ddf, border_results(plan), shuffle_method=plan.shuffle_method)
    ddf = plan.ddf
    centroids = plan.centroids
    assign_kw = _assign_kw(plan)
    if plan.shuffle_plan is not None:
        assign_kw["cluster_parts"] = dask.delayed(plan.shuffle_plan.part_of_cluster, traverse=False)
    meta_kw = {**assign_kw, "cluster_parts": None if plan.shuffle_plan is None else plan.shuffle_plan.part_of_cluster}
    payload = ddf.map_partitions(
        assign.assign_partition,
        # one graph key for the centroids instead of a copy inside every task
        centroids=dask.delayed(centroids, traverse=False),
        **assign_kw,
        meta=assign.assign_partition(ddf._meta, centroids, **meta_kw),
        enforce_metadata=False,
        token="semdedup_assign",  # the task name on the dashboard
    )
    clustered = _cluster_shuffle(plan, payload)
    step: dict[str, Any] = dict(device=plan.device, block_size=plan.block_size)
    if plan.max_memory is not None:
        step["max_memory"] = plan.max_memory
    scored = clustered.map_partitions(
        pairwise.dedup_partition,
        **step,
        meta=pairwise.dedup_partition(clustered._meta, **step),
        enforce_metadata=False,
        token="semdedup_pairs",
    )
    return _join.route(ddf, scored, shuffle_method=plan.shuffle_method)


def _assign_kw(plan: DedupPlan) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        embedding_column=plan.embedding_column,
        device=plan.device,
        id_column=plan.id_column,
        which_to_keep=plan.which_to_keep,
        seed=plan.seed,
    )
    if plan.assign_block_rows != assign.ASSIGN_BLOCK_ROWS:
        kw["block_rows"] = plan.assign_block_rows
    return kw


def _cluster_shuffle(plan: DedupPlan, frame: Any, method: str | None = None) -> Any:
    """``frame`` shuffled on ``cluster``: partition ``i`` of every frame shuffled so holds the same clusters.

    Dask's hash partitioning depends only on the ``cluster`` values (cast to float64 before
    hashing, whatever the shuffle method) and the partition count; with a shuffle plan, the
    ``_part`` column routes explicitly. ``method`` overrides ``plan.shuffle_method``.
    """
    method = method or plan.shuffle_method
    if plan.shuffle_plan is None:
        return frame.shuffle(on="cluster", npartitions=plan.npartitions, shuffle_method=method)
    p = plan.shuffle_plan.npartitions
    return frame.set_index("_part", divisions=[*range(p), p], shuffle_method=method)


def _side_shuffle_method(plan: DedupPlan) -> str | None:
    """Shuffle method of the border rows' sketches and the candidates.

    Without a distributed client, Dask's default shuffle is on disk (partd), meant for data
    larger than memory; these payloads are a fraction of the embeddings' (sketches of ``r + 1``
    values, candidates only where the estimate allows few), so without a memory budget they
    are shuffled in memory (``"tasks"``). Otherwise: the run's method.
    """
    if plan.shuffle_method is not None or plan.max_memory is not None:
        return plan.shuffle_method
    import dask

    if dask.config.get("dataframe.shuffle.method", None) is not None:
        return None
    try:
        from distributed import default_client

        default_client()
    except (ImportError, ValueError):
        return "tasks"
    return None


def border_results(plan: DedupPlan) -> Any:
    """Border-aware per-row results (not yet routed): within-cluster and cross-border, lazily.

    Three shuffles on ``cluster``, zipped partition by partition (each routes cluster ``c`` to
    the same partition number): the own rows with their embeddings (the plain payload), the
    border rows with their ``(r + 1)``-dim sketches only (:mod:`.border`), and the candidate
    pairs the sketch bound lets through, each carrying the own row's embedding to the border
    row's own cluster, where :func:`.pairwise.verify_candidates` computes the exact similarity.
    """
    import dask.dataframe as dd

    ddf = plan.ddf
    centroids = plan.centroids
    basis = plan.sketch_basis if plan.sketch_basis is not None else border.sketch_basis(centroids)
    parts = None if plan.shuffle_plan is None else plan.shuffle_plan.part_of_cluster
    kw = {**_assign_kw(plan), **_border_kw(plan)}
    own_meta, guest_meta = assign.assign_border_partition(
        ddf._meta, centroids, number=0, sketch_basis=basis, cluster_parts=parts, **kw
    )
    c_key, b_key = dask_delayed(centroids), dask_delayed(basis)
    p_key = None if parts is None else dask_delayed(parts)
    assign_task = _named_task("semdedup_assign", assign.assign_border_partition, nout=2)
    split = [
        assign_task(part, c_key, number=i, sketch_basis=b_key, cluster_parts=p_key, **kw)
        for i, part in enumerate(ddf.to_delayed())
    ]
    own = dd.from_delayed([s[0] for s in split], meta=own_meta, verify_meta=False)
    guests = dd.from_delayed([s[1] for s in split], meta=guest_meta, verify_meta=False)
    own_c = _cluster_shuffle(plan, own)
    side = _side_shuffle_method(plan)
    guests_c = _cluster_shuffle(plan, guests, side)
    step: dict[str, Any] = dict(
        device=plan.device, block_size=plan.block_size, eps=plan.eps, max_memory=plan.max_memory
    )
    res_meta, cand_meta = pairwise.border_block(
        own_c._meta, guests_c._meta, sketch_basis=basis, cluster_parts=parts, **step
    )
    block_task = _named_task("semdedup_border_block", pairwise.border_block, nout=2)
    own_parts = own_c.to_delayed(optimize_graph=False)
    blocks = [
        block_task(o, g, sketch_basis=b_key, cluster_parts=p_key, **step)
        for o, g in zip(own_parts, guests_c.to_delayed(optimize_graph=False))
    ]
    within = dd.from_delayed([b[0] for b in blocks], meta=res_meta, verify_meta=False)
    if plan.border_embeddings:  # border rows came whole: the blocks checked their pairs
        return dd.concat([within, dd.from_delayed([b[1] for b in blocks], meta=res_meta, verify_meta=False)])
    cands = dd.from_delayed([b[1] for b in blocks], meta=cand_meta, verify_meta=False)
    cands = _cluster_shuffle(plan, cands, side)
    verify_task = _named_task("semdedup_verify", pairwise.verify_candidates)
    cand_parts = cands.to_delayed(optimize_graph=False)
    verified = [verify_task(o, c, eps=plan.eps, device=plan.device) for o, c in zip(own_parts, cand_parts)]
    cross = dd.from_delayed(verified, meta=res_meta, verify_meta=False)
    return dd.concat([within, cross])


def one_task_results(plan: DedupPlan) -> Any:
    """:func:`cluster_results` of a small input without shuffles: the assign step per partition,
    then every cluster's pairwise step (and the border step) in one task, whose results are
    split by input partition. Same values as the shuffled way (each cluster's block is the
    same rows, whatever partition holds it)."""
    import dask.dataframe as dd

    ddf = plan.ddf
    centroids = plan.centroids
    kw = _assign_kw(plan)
    c_key = dask_delayed(centroids)
    if plan.border_aware:
        basis = plan.sketch_basis if plan.sketch_basis is not None else border.sketch_basis(centroids)
        kw.update(_border_kw(plan))
        assign_task = _named_task("semdedup_assign", assign.assign_border_partition, nout=2)
        b_key = dask_delayed(basis)
        split = [
            assign_task(part, c_key, number=i, sketch_basis=b_key, **kw) for i, part in enumerate(ddf.to_delayed())
        ]
        own, guests = [s[0] for s in split], [s[1] for s in split]
        meta = assign.assign_border_partition(ddf._meta, centroids, number=0, sketch_basis=basis, **kw)
        res_meta = pairwise.border_block(meta[0], meta[1], eps=plan.eps, sketch_basis=basis)[0]
    else:
        assign_task = _named_task("semdedup_assign", assign.assign_partition)
        own = [assign_task(part, c_key, partition_info={"number": i}, **kw) for i, part in enumerate(ddf.to_delayed())]
        guests, b_key = None, None
        res_meta = pairwise.dedup_partition(assign.assign_partition(ddf._meta, centroids, **kw))
    local = _named_task("semdedup_local", pairwise.local_results)(
        own, guests, eps=plan.eps, sketch_basis=b_key, block_size=plan.block_size, device=plan.device
    )
    pick = _named_task("semdedup_pick", pairwise.rows_of_partition)
    n = ddf.npartitions
    parts = [pick(local, p) for p in range(n)]
    return dd.from_delayed(
        parts, meta=pairwise.rows_of_partition(res_meta, 0), divisions=tuple(_frame.row_divisions(n)), verify_meta=False
    )


def dask_delayed(value: Any) -> Any:
    """``value`` as one graph key (not copied into every task that uses it)."""
    import dask

    return dask.delayed(value, traverse=False)


def _named_task(name: str, func: Any, nout: int | None = None) -> Any:
    """``dask.delayed(func, pure=True)`` whose calls are keyed ``name-<token>``: the name the
    dashboard shows for the task, as ``map_partitions(token=...)`` gives the plain path's."""
    import dask
    from dask.base import tokenize

    task = dask.delayed(func, nout=nout, pure=True)

    def call(*args: Any, **kwargs: Any) -> Any:
        return task(*args, dask_key_name=f"{name}-{tokenize(func, *args, **kwargs)}", **kwargs)

    return call


def attach_results(plan: DedupPlan, routed: Any) -> Any:
    """The input rows with the dedup columns (:func:`cluster_results` zipped with the input)."""
    id_dtype = _id_dtype(plan)
    return _join.attach_routed(plan.ddf, routed, _attach, eps=plan.eps, id_dtype=id_dtype, border=plan.border_aware)


def _id_dtype(plan: DedupPlan) -> Any:
    meta = plan.ddf._meta
    ids = meta[plan.id_column].reset_index(drop=True) if plan.id_column is not None else _frame.index_values(meta)
    return backends.nullable(ids).dtype


def _attach(df: Any, res: Any, eps: float, id_dtype: Any = None, border: bool = False) -> Any:
    """Input partition plus its rows' results (rows absent from ``res`` have no embedding)."""
    if border:
        res = _join.best_per_row(res, "max_similarity", pairwise.BORDER_RESULT_COLUMNS)
        res = res[["cluster", "max_similarity", "duplicate_of"]]
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
