"""Step 3: inside each cluster, every row's largest cosine similarity to a row ranked ahead of it.

The work is done in ``(block_size, block_size)`` tiles of the lower triangle, so a cluster of
``n`` rows costs ``n**2 / 2`` dot products but never more than one tile of memory: a cluster of
300k rows (SemDeDup's largest on LAION) needs 4 MiB of similarities at a time, not 360 GB.
In border-aware runs the cluster's block also receives the sketches of border rows of
neighbouring clusters (:mod:`.border`): :func:`border_block` tests them against the cluster's own
rows with the sketch bound, and :func:`verify_candidates` computes the exact similarity of the
pairs it lets through, in the border row's own cluster block, where its embedding is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from . import _frame, border, budget

__all__ = [
    "BORDER_RESULT_COLUMNS",
    "PAIRWISE_BLOCK_SIZE",
    "border_block",
    "dedup_partition",
    "local_results",
    "max_similarity_to_earlier",
    "rows_of_partition",
    "verify_candidates",
]

# Extra result columns of border-aware runs: the partner's rank key and row id, so that the
# results one row gets from several cluster blocks are reduced by the same global order.
BORDER_RESULT_COLUMNS = ("_pkey", "_prow")

# NeMo Curator's pairwise_batch_size default.
PAIRWISE_BLOCK_SIZE = 1024


def max_similarity_to_earlier(x: Any, *, block_size: int = PAIRWISE_BLOCK_SIZE) -> tuple[Any, Any]:
    """For each row, the largest dot product with any earlier row, in tiles.

    Parameters
    ----------
    x
        torch float32 ``(n, d)``, rows in rank order (row 0 is kept first), unit length for
        cosine similarity.
    block_size
        Rows per tile side; memory is ``block_size**2`` floats whatever ``n`` is.

    Returns
    -------
    max_similarity : torch.Tensor
        float32 ``(n,)``: ``max_{j<i} x_i . x_j``; NaN for row 0 (no earlier row).
    partner : torch.Tensor
        int64 ``(n,)``: the ``j`` attaining it (the smallest such ``j`` on ties); -1 for row 0.
    """
    import torch

    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, not {block_size!r}")
    n = x.shape[0]
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=x.device)
    partner = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    for qs in range(0, n, block_size):
        qe = min(qs + block_size, n)
        q = x[qs:qe]
        q_best = best[qs:qe]  # views: updated in place
        q_partner = partner[qs:qe]
        for ks in range(0, qe, block_size):  # tiles left of and on the diagonal
            ke = min(ks + block_size, qe)
            sim = q @ x[ks:ke].T
            if ke > qs:  # the tile reaches the diagonal: hide j >= i
                i = torch.arange(qs, qe, device=x.device)[:, None]
                j = torch.arange(ks, ke, device=x.device)[None, :]
                sim = sim.masked_fill(j >= i, float("-inf"))
            tile_best, tile_arg = sim.max(dim=1)  # first maximum on ties
            better = tile_best > q_best  # strict: earlier tiles win ties
            q_best[better] = tile_best[better]
            q_partner[better] = tile_arg[better] + ks
    best[partner < 0] = float("nan")
    return best, partner


def dedup_partition(
    df: Any,
    *,
    block_size: int = PAIRWISE_BLOCK_SIZE,
    device: str | None = None,
    max_memory: int | None = None,
) -> Any:
    """Within-cluster max similarity for every row of a partition holding whole clusters.

    Parameters
    ----------
    df
        pandas or cuDF partition from :func:`dask_clip.dedup.assign.assign_partition` after the
        shuffle on ``cluster``: columns ``_row``, ``cluster``, ``_rank``, ``_id`` and ``_emb``;
        every row of a cluster is in this partition.
    block_size
        Tile side of :func:`max_similarity_to_earlier`.
    device
        torch device; ``None``: CPU for pandas, CUDA for cuDF.
    max_memory
        Budget in bytes: a cluster whose rows exceed its share raises
        :class:`~dask_clip.dedup.budget.ClusterTooLargeError`.

    Returns
    -------
    DataFrame
        Same backend, columns ``_row`` (int64), ``cluster`` (int32), ``max_similarity``
        (float32, NaN for the first row of its cluster) and ``duplicate_of`` (the id of the row
        attaining it, null for the first row); one row per row of ``df``.

    Notes
    -----
    Rows are ranked within a cluster by ``(_rank, _row)``; ``_row`` follows the global input
    order, so ties are broken the same way on every partitioning.
    """
    import torch

    _, max_sim, partner, _ = _within(df, block_size=block_size, device=device, max_memory=max_memory)
    has = (partner >= 0).cpu().numpy()
    partner_ids = backends.take(df["_id"], np.where(has, _frame.to_host(partner), 0))
    return backends.new_frame(
        df,
        {
            "_row": df["_row"].reset_index(drop=True),
            "cluster": df["cluster"].reset_index(drop=True),
            "max_similarity": backends.new_column(df, max_sim, "float32"),
            "duplicate_of": partner_ids.where(backends.new_column(df, torch.from_numpy(has))),
        },
    )


def _within(df: Any, *, block_size: int, device: str | None, max_memory: int | None) -> tuple[Any, Any, Any, Any]:
    """The plain step on one partition of own rows.

    Returns
    -------
    x
        torch float32 ``(n, d)``: the rows, normalised (as compared).
    max_sim, partner
        float32 / int64 ``(n,)``: :func:`max_similarity_to_earlier` per row in ``df`` order,
        ``partner`` a position in ``df`` (-1 where none).
    order
        int64 ``(n,)``: the positions sorted by ``(cluster, _rank, _row)``.
    """
    import torch

    x, _ = backends.embedding_matrix(df["_emb"], device=device)
    if x.shape[0] != len(df):
        raise ValueError("the cluster shuffle received rows without an embedding")
    dev = x.device
    n = len(df)
    max_sim = torch.full((n,), float("nan"), dtype=torch.float32, device=dev)
    partner = torch.full((n,), -1, dtype=torch.int64, device=dev)
    order = torch.zeros(0, dtype=torch.int64, device=dev)
    if n:
        x = torch.nn.functional.normalize(x, dim=1)
        cluster = backends.numeric_tensor(df["cluster"], dev)
        # lexicographic (cluster, _rank, _row) by stable sorts from the last key to the first
        order = torch.argsort(backends.numeric_tensor(df["_row"], dev), stable=True)
        order = order[torch.argsort(backends.numeric_tensor(df["_rank"], dev)[order], stable=True)]
        order = order[torch.argsort(cluster[order], stable=True)]
        xs = x[order]
        values, counts = torch.unique_consecutive(cluster[order], return_counts=True)
        start = 0
        for value, size in zip(values.tolist(), counts.tolist()):
            budget.check_block(value, size, 0, x.shape[1], max_memory)
            sims, arg = max_similarity_to_earlier(xs[start : start + size], block_size=block_size)
            rows = order[start : start + size]
            max_sim[rows] = sims
            partner[rows] = torch.where(arg >= 0, order[(start + arg).clamp(min=start)], arg)
            start += size
    return x, max_sim, partner, order


def border_block(
    df: Any,
    guests: Any,
    *,
    eps: float,
    sketch_basis: np.ndarray,
    block_size: int = PAIRWISE_BLOCK_SIZE,
    device: str | None = None,
    max_memory: int | None = None,
    cluster_parts: np.ndarray | None = None,
) -> tuple[Any, Any]:
    """Border-aware step on one shuffled partition: within-cluster results and cross-border candidates.

    Parameters
    ----------
    df
        The own rows of the partition's clusters (:func:`dedup_partition`'s input).
    guests
        The border rows of the same clusters (:func:`.assign.assign_border_partition`'s second
        payload after the same shuffle): ``cluster`` is the cluster they visit, ``_home`` their
        own, and ``_sk`` their sketch (:data:`.border.SKETCH_COLUMN`).
    eps
        The dedup threshold.
    sketch_basis
        float32 ``(d, r)``, the basis the border rows' sketches were taken with.
    block_size, device, max_memory
        As :func:`dedup_partition`.
    cluster_parts
        int64 ``(k,)`` output partition of each cluster, when the shuffle routes by ``_part``.

    Returns
    -------
    results : DataFrame
        :func:`dedup_partition`'s columns for every own row, plus ``_pkey`` (float64) and
        ``_prow`` (int64), the partner's rank key and row id (NaN and -1 where none).
    candidates : DataFrame
        Where ``guests`` carry their embeddings (``_emb``, ``_id``): the cross-border results,
        checked here, with the columns of ``results``. Otherwise:
        one row per (border row, own row) pair that the sketch bound (:mod:`.border`) does not
        rule out: ``cluster`` (int32, the border row's own cluster, where the candidate goes
        next), ``_grow`` (int64, the border row), and the own row's ``_row``, ``_host`` (its
        cluster), ``_rank``, ``_id`` and ``_emb`` (its embedding); ``_part`` with
        ``cluster_parts``.
    """
    import torch

    x, max_sim, partner, order = _within(df, block_size=block_size, device=device, max_memory=max_memory)
    dev = x.device
    n = len(df)
    row = backends.numeric_tensor(df["_row"], dev).to(torch.int64) if n else torch.zeros(0, dtype=torch.int64)
    rank = backends.numeric_tensor(df["_rank"], dev).to(torch.float64) if n else torch.zeros(0, dtype=torch.float64)
    matched = partner >= 0
    p = partner.clamp(min=0)
    has = matched.cpu().numpy()
    results = backends.new_frame(
        df,
        {
            "_row": df["_row"].reset_index(drop=True),
            "cluster": df["cluster"].reset_index(drop=True),
            "max_similarity": backends.new_column(df, max_sim, "float32"),
            "duplicate_of": backends.take(df["_id"], np.where(has, _frame.to_host(partner), 0)).where(
                backends.new_column(df, torch.from_numpy(has))
            ),
            "_pkey": backends.new_column(df, torch.where(matched, rank[p] if n else rank, float("nan")), "float64"),
            "_prow": backends.new_column(df, torch.where(matched, row[p] if n else row, -1), "int64"),
        },
    )
    if "_emb" in guests.columns:  # border rows came with their embeddings: check the pairs here
        own_idx, guest_idx, v = _cross_candidates(df, guests, x, order, eps, sketch_basis, block_size, dev, exact=True)
        return results, _local_pairs(df, guests, own_idx, guest_idx, v, eps, dev)
    own_idx, guest_idx, _ = _cross_candidates(df, guests, x, order, eps, sketch_basis, block_size, dev)
    own_host = _frame.to_host(own_idx).astype(np.int64)
    home = backends.numeric_tensor(guests["_home"], dev).to(torch.int32) if len(guests) else None
    g_home = home[guest_idx] if home is not None else torch.zeros(0, dtype=torch.int32, device=dev)
    g_row = (
        backends.numeric_tensor(guests["_row"], dev).to(torch.int64)[guest_idx]
        if len(guests)
        else torch.zeros(0, dtype=torch.int64, device=dev)
    )
    x_own = x[own_idx] if n else x
    cand = {
        "cluster": backends.new_column(df, g_home, "int32"),
        "_grow": backends.new_column(df, g_row, "int64"),
        "_row": backends.take(df["_row"], own_host),
        "_host": backends.take(df["cluster"], own_host),
        "_rank": backends.take(df["_rank"], own_host),
        "_id": backends.take(df["_id"], own_host),
        "_emb": backends.pack_rows(df, x_own, df["_emb"], own_host),
    }
    if cluster_parts is not None:
        parts = np.asarray(cluster_parts, dtype=np.int64)[_frame.to_host(g_home).astype(np.int64)]
        cand["_part"] = backends.new_column(df, parts, "int64")
    return results, backends.new_frame(df, cand)


def _local_pairs(df: Any, guests: Any, own_idx: Any, guest_idx: Any, v: Any, eps: float, dev: Any) -> Any:
    """Results of the pairs checked in the host block (border rows with embeddings)."""
    import torch

    def col(frame: Any, name: str, dtype: Any) -> Any:
        if len(frame) == 0:
            return torch.zeros(0, dtype=dtype, device=dev)
        return backends.numeric_tensor(frame[name], dev).to(dtype)

    return _pair_results(
        df,
        v=v,
        threshold=border.duplicate_threshold(eps),
        g_ids=guests["_id"],
        g_at=guest_idx,
        o_ids=df["_id"],
        o_at=own_idx,
        g_rank=col(guests, "_rank", torch.float64)[guest_idx],
        o_rank=col(df, "_rank", torch.float64)[own_idx],
        g_row=col(guests, "_row", torch.int64)[guest_idx],
        o_row=col(df, "_row", torch.int64)[own_idx],
        g_cluster=col(guests, "_home", torch.int64)[guest_idx],
        o_cluster=col(df, "cluster", torch.int64)[own_idx],
    )


def _cross_candidates(
    df: Any,
    guests: Any,
    x: Any,
    order: Any,
    eps: float,
    basis: np.ndarray,
    block_size: int,
    dev: Any,
    *,
    exact: bool = False,
) -> tuple[Any, Any, Any]:
    """(own row, border row) position pairs of the partition that the sketch bound lets through.

    With ``exact`` (border rows carry ``_emb``): only the pairs whose exact similarity reaches
    the threshold, with it (:func:`.border.exact_pairs`); otherwise the similarity is None.
    """
    import torch

    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    none_v = torch.zeros(0, dtype=torch.float32, device=dev) if exact else None
    if len(df) == 0 or len(guests) == 0:
        return empty, empty, none_v
    guest_x = None
    if exact:
        guest_x, _ = backends.embedding_matrix(guests["_emb"], device=dev)
        if guest_x.shape[0] != len(guests):
            raise ValueError("the cluster shuffle received rows without an embedding")
    q = torch.as_tensor(np.asarray(basis, np.float32), device=dev)
    g_sk, _ = backends.embedding_matrix(guests[border.SKETCH_COLUMN], device=dev)
    if g_sk.shape != (len(guests), q.shape[1] + 1):
        raise ValueError(f"border rows' sketches are {tuple(g_sk.shape)}, not ({len(guests)}, {q.shape[1] + 1})")
    host = backends.numeric_tensor(guests["cluster"], dev).to(torch.int64)
    g_order = torch.argsort(host, stable=True)
    g_values, g_counts = torch.unique_consecutive(host[g_order], return_counts=True)
    own_cluster = backends.numeric_tensor(df["cluster"], dev).to(torch.int64)[order]
    o_values, o_counts = torch.unique_consecutive(own_cluster, return_counts=True)
    o_start = dict(zip(o_values.tolist(), (torch.cumsum(o_counts, 0) - o_counts).tolist()))
    o_size = dict(zip(o_values.tolist(), o_counts.tolist()))
    # sketches in block order once: each block then reads contiguous slices, not a gather
    o_sk = border.sketch(x, q)[order]
    g_sk = g_sk[g_order]
    # the dense test runs on the coarse sketches, the fine ones re-test what passes it
    r = border.coarse_dims(x.shape[1])
    o_co, g_co = border.coarse_sketch(o_sk, r), border.coarse_sketch(g_sk, r)
    two_level = o_co.shape[1] < o_sk.shape[1]
    threshold = border.duplicate_threshold(eps)
    out_o, out_g, out_v = [], [], []
    start = 0
    for c, size in zip(g_values.tolist(), g_counts.tolist()):
        g_at = slice(start, start + size)
        g = g_order[g_at]
        start += size
        if c not in o_start:
            continue  # border rows of a cluster no row is nearest to: nothing to compare with
        o_at = slice(o_start[c], o_start[c] + o_size[c])
        o = order[o_at]
        if guest_x is not None:
            gi, oi, v = border.exact_pairs(x[o], o_co[o_at], guest_x, g, g_co[g_at], threshold, block_size)
            out_v.append(v)
        else:
            gi, oi = border.sketch_candidates(
                o_co[o_at],
                g_co[g_at],
                threshold,
                block_size,
                own_fine=o_sk[o_at] if two_level else None,
                guest_fine=g_sk[g_at] if two_level else None,
            )
        out_o.append(o[oi])
        out_g.append(g[gi])
    if not out_o:
        return empty, empty, none_v
    return torch.cat(out_o), torch.cat(out_g), (torch.cat(out_v) if exact else None)


def verify_candidates(df: Any, candidates: Any, *, eps: float, device: str | None = None) -> Any:
    """The exact check of :func:`border_block`'s candidates, in the border rows' own cluster block.

    Parameters
    ----------
    df
        The own rows of a shuffled partition (the same partition number the candidates were
        routed to: both shuffles route by cluster, so it holds every candidate's border row).
    candidates
        :func:`border_block`'s candidates for this partition.
    eps
        The dedup threshold.
    device
        torch device; ``None``: CPU for pandas, CUDA for cuDF.

    Returns
    -------
    DataFrame
        :func:`border_block`'s result columns, one row per pair within eps: the row ranked later
        (by ``(_rank, _row)``, the global keep order) with the other as its partner.

    Raises
    ------
    RuntimeError
        A candidate's border row is not in ``df`` (the two shuffles routed differently).
    """
    import torch

    m = len(candidates)
    if m and len(df) == 0:
        raise RuntimeError("cross-border candidates reached a partition without their rows")
    if m == 0:
        e_i, e_f = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
        return _pair_results(
            df,
            v=torch.zeros(0, dtype=torch.float32),
            threshold=0.0,
            g_ids=df["_id"],
            g_at=e_i,
            o_ids=df["_id"],
            o_at=e_i,
            g_rank=e_f,
            o_rank=e_f,
            g_row=e_i,
            o_row=e_i,
            g_cluster=e_i,
            o_cluster=e_i,
        )
    dev = torch.device(device) if device is not None else None
    row = backends.numeric_tensor(df["_row"], dev).to(torch.int64)
    dev = row.device
    g_row = backends.numeric_tensor(candidates["_grow"], dev).to(torch.int64)
    by_row = torch.argsort(row)
    at = torch.searchsorted(row[by_row], g_row).clamp(max=len(df) - 1)
    g_pos = by_row[at]
    if not bool((row[g_pos] == g_row).all()):
        raise RuntimeError("cross-border candidates reached a partition without their rows")
    g_host = _frame.to_host(g_pos).astype(np.int64)
    xg, _ = backends.embedding_matrix(backends.take(df["_emb"], g_host), device=dev)
    xo, _ = backends.embedding_matrix(candidates["_emb"], device=dev)
    if xg.shape[0] != m or xo.shape[0] != m:
        raise ValueError("the cluster shuffle received rows without an embedding")
    v = (torch.nn.functional.normalize(xg, dim=1) * torch.nn.functional.normalize(xo, dim=1)).sum(dim=1)
    g_rank = backends.numeric_tensor(df["_rank"], dev).to(torch.float64)[g_pos]
    return _pair_results(
        df,
        v=v,
        threshold=border.duplicate_threshold(eps),
        g_ids=df["_id"],
        g_at=g_pos,
        o_ids=candidates["_id"],
        o_at=torch.arange(m, device=dev),
        g_rank=g_rank,
        o_rank=backends.numeric_tensor(candidates["_rank"], dev).to(torch.float64),
        g_row=g_row,
        o_row=backends.numeric_tensor(candidates["_row"], dev).to(torch.int64),
        g_cluster=backends.numeric_tensor(candidates["cluster"], dev).to(torch.int64),
        o_cluster=backends.numeric_tensor(candidates["_host"], dev).to(torch.int64),
    )


def _pair_results(
    like: Any,
    *,
    v: Any,
    threshold: float,
    g_ids: Any,
    g_at: Any,
    o_ids: Any,
    o_at: Any,
    g_rank: Any,
    o_rank: Any,
    g_row: Any,
    o_row: Any,
    g_cluster: Any,
    o_cluster: Any,
) -> Any:
    """Result rows of the (border row, own row) pairs with ``v >= threshold``.

    Of each such pair the row ranked later by ``(_rank, _row)`` gets a result naming the other.
    ``v`` and the other tensors are per pair; ``g_ids`` / ``o_ids`` are id columns read at
    positions ``g_at`` / ``o_at``. Returns :func:`border_block`'s result columns.
    """
    import torch

    hit = torch.nonzero(v >= threshold).flatten()
    first = ((g_rank < o_rank) | ((g_rank == o_rank) & (g_row < o_row)))[hit]  # own row flagged
    g_names = backends.take(g_ids, _frame.to_host(g_at[hit]).astype(np.int64))
    o_names = backends.take(o_ids, _frame.to_host(o_at[hit]).astype(np.int64))
    return backends.new_frame(
        like,
        {
            "_row": backends.new_column(like, torch.where(first, o_row[hit], g_row[hit]), "int64"),
            "cluster": backends.new_column(like, torch.where(first, o_cluster[hit], g_cluster[hit]), "int32"),
            "max_similarity": backends.new_column(like, v[hit], "float32"),
            "duplicate_of": g_names.where(backends.new_column(like, first.cpu()), o_names),
            "_pkey": backends.new_column(like, torch.where(first, g_rank[hit], o_rank[hit]), "float64"),
            "_prow": backends.new_column(like, torch.where(first, g_row[hit], o_row[hit]), "int64"),
        },
    )


def local_results(
    own: list,
    guests: list | None,
    *,
    eps: float,
    sketch_basis: np.ndarray | None = None,
    block_size: int = PAIRWISE_BLOCK_SIZE,
    device: str | None = None,
) -> Any:
    """Every cluster's pairwise step in one task (a small input: no shuffle).

    Parameters
    ----------
    own
        The assign step's own-row payloads of all input partitions.
    guests
        Their border-row payloads (border-aware), or None (plain SemDeDup).
    eps, sketch_basis, block_size, device
        As :func:`border_block`.

    Returns
    -------
    DataFrame
        :func:`dedup_partition`'s result rows (plain), or :func:`border_block`'s results and the
        cross-border pairs found (:func:`verify_candidates` in the same task), for all rows.
    """
    from dask.dataframe.dispatch import concat

    rows = concat(list(own), ignore_index=True) if len(own) > 1 else own[0]
    if guests is None:
        return dedup_partition(rows, block_size=block_size, device=device)
    if sketch_basis is None:
        raise ValueError("border rows need the sketch basis")
    visiting = concat(list(guests), ignore_index=True) if len(guests) > 1 else guests[0]
    within, second = border_block(
        rows, visiting, eps=eps, sketch_basis=sketch_basis, block_size=block_size, device=device
    )
    cross = second if "_emb" in visiting.columns else verify_candidates(rows, second, eps=eps, device=device)
    return concat([within, cross], ignore_index=True)


def rows_of_partition(results: Any, number: int) -> Any:
    """The result rows of input partition ``number``, indexed by ``_row`` in ascending order (what
    :func:`dask_clip.dedup._join.route` gives after a shuffle)."""
    row = results["_row"]
    lo, hi = number << _frame.ROW_BITS, (number + 1) << _frame.ROW_BITS
    return results[(row >= lo) & (row < hi)].sort_values("_row").set_index("_row")
