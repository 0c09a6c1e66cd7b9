"""Step 3: inside each cluster, every row's largest cosine similarity to a row ranked ahead of it.

The work is done in ``(block_size, block_size)`` tiles of the lower triangle, so a cluster of
``n`` rows costs ``n**2 / 2`` dot products but never more than one tile of memory: a cluster of
300k rows (SemDeDup's largest on LAION) needs 4 MiB of similarities at a time, not 360 GB.
In border-aware runs the cluster's block also holds border rows of neighbouring clusters
(:mod:`.border`); they are compared with the cluster's own rows only, within the bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from . import _frame, border, budget

__all__ = ["BORDER_RESULT_COLUMNS", "PAIRWISE_BLOCK_SIZE", "dedup_partition", "max_similarity_to_earlier"]

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
    centroids: np.ndarray | None = None,
    border_scale: float | None = None,
    eps: float | None = None,
    max_memory: int | None = None,
    sketch_basis: np.ndarray | None = None,
) -> Any:
    """Within-cluster max similarity for every row of a partition holding whole clusters.

    Parameters
    ----------
    df
        pandas or cuDF partition from :func:`dask_clip.dedup.assign.assign_partition` after the
        shuffle on ``cluster``: columns ``_row``, ``cluster``, ``_rank``, ``_id`` and ``_emb``
        (and ``_home``, ``_gap`` in border-aware runs); every row of a cluster is in this
        partition.
    block_size
        Tile side of :func:`max_similarity_to_earlier`.
    device
        torch device; ``None``: CPU for pandas, CUDA for cuDF.
    centroids, border_scale, eps
        Border-aware runs only: float32 ``(k, d)`` centroids, the margins' scale
        (:func:`.border.margin_scale`) and the dedup threshold.
    max_memory
        Budget in bytes: a cluster whose rows exceed its share raises
        :class:`~dask_clip.dedup.budget.ClusterTooLargeError`.
    sketch_basis
        Border-aware runs: float32 ``(d, r)`` basis of :func:`.border.sketch`; ``None``:
        :func:`.border.sketch_basis` of ``centroids`` (computed here, once per call).

    Returns
    -------
    DataFrame
        Same backend, columns ``_row`` (int64), ``cluster`` (int32), ``max_similarity``
        (float32, NaN for the first row of its cluster) and ``duplicate_of`` (the id of the row
        attaining it, null for the first row); one row per row of ``df``. Border-aware: one row
        per own row and one per border row that found a duplicate ranked ahead of it in this
        cluster, ``cluster`` being the row's own cluster, plus ``_pkey`` (float64) and ``_prow``
        (int64), the partner's rank key and row id (NaN and -1 where none).

    Notes
    -----
    Rows are ranked within a cluster by ``(_rank, _row)``; ``_row`` follows the global input
    order, so ties are broken the same way on every partitioning.
    """
    import torch

    x, _ = backends.embedding_matrix(df["_emb"], device=device)
    if x.shape[0] != len(df):
        raise ValueError("the cluster shuffle received rows without an embedding")
    if "_home" in df.columns:
        if centroids is None or border_scale is None or eps is None:
            raise ValueError("border rows need centroids, border_scale and eps")
        return _border_partition(
            df,
            x,
            block_size=block_size,
            centroids=centroids,
            border_scale=border_scale,
            eps=eps,
            max_memory=max_memory,
            sketch_basis=sketch_basis,
        )
    dev = x.device
    n = len(df)
    max_sim = torch.full((n,), float("nan"), dtype=torch.float32, device=dev)
    partner = torch.full((n,), -1, dtype=torch.int64, device=dev)
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


def _border_partition(
    df: Any,
    x: Any,
    *,
    block_size: int,
    centroids: np.ndarray,
    border_scale: float,
    eps: float,
    max_memory: int | None,
    sketch_basis: np.ndarray | None = None,
) -> Any:
    """:func:`dedup_partition` of a partition with border rows (see :mod:`.border`)."""
    import torch

    dev = x.device
    n = len(df)
    d = x.shape[1]
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    # partners as positions in the partition's global rank order (ties go to the smaller)
    best_pos = torch.full((n,), -1, dtype=torch.int64, device=dev)
    row = backends.numeric_tensor(df["_row"], dev).to(torch.int64)
    rank = backends.numeric_tensor(df["_rank"], dev).to(torch.float64)
    home = backends.numeric_tensor(df["_home"], dev).to(torch.int64)
    if n:
        # Rows come unit length from the assign step. The own rows are normalised again, per
        # cluster, as the plain step normalises them (the same per-row operation: the same
        # bits); border rows only where a pair needs their full vector (cluster_cross_candidates).
        # Normalising or gathering every border row would copy several times the block.
        host = backends.numeric_tensor(df["cluster"], dev).to(torch.int64)
        own = home == host
        by_rank = torch.argsort(row, stable=True)
        by_rank = by_rank[torch.argsort(rank[by_rank], stable=True)]
        gpos = torch.empty_like(by_rank)
        gpos[by_rank] = torch.arange(n, device=dev)
        # (host cluster, own rows first, rank order): each cluster's own rows are in the
        # order of the plain step, so its within-cluster answer is the same
        order = by_rank[torch.argsort((~own[by_rank]).to(torch.int8), stable=True)]
        order = order[torch.argsort(host[order], stable=True)]
        values, counts = torch.unique_consecutive(host[order], return_counts=True)
        own_counts = torch.zeros_like(counts)
        own_counts.index_add_(
            0, torch.repeat_interleave(torch.arange(len(counts), device=dev), counts), own[order].to(counts.dtype)
        )
        threshold = border.duplicate_threshold(eps)
        basis = sketch_basis if sketch_basis is not None else border.sketch_basis(centroids)
        sk = border.sketch(x, torch.as_tensor(np.asarray(basis, np.float32), device=dev))
        found: list[tuple[Any, Any, Any]] = []
        start = 0
        for c, size, n_own in zip(values.tolist(), counts.tolist(), own_counts.tolist()):
            seg = order[start : start + size]
            start += size
            budget.check_block(c, n_own, size - n_own, d, max_memory)
            o, g = seg[:n_own], seg[n_own:]
            if n_own == 0:
                continue  # border rows only: nothing of this partition's clusters to compare with
            xo = torch.nn.functional.normalize(x[o], dim=1)
            sims, arg = max_similarity_to_earlier(xo, block_size=block_size)
            has = arg >= 0
            best[o[has]] = sims[has]
            best_pos[o[has]] = gpos[o[arg[has]]]
            if g.numel() == 0:
                continue
            (oi, ov, op), (gi, gv, gp) = border.cluster_cross_candidates(
                xo,
                x,
                guest_rows=g,
                own_pos=gpos[o],
                guest_pos=gpos[g],
                own_sketch=sk[o],
                guest_sketch=sk[g],
                threshold=threshold,
                block_size=block_size,
            )
            found.append((torch.cat([o[oi], g[gi]]), torch.cat([ov, gv]), torch.cat([op, gp])))
        if found:  # cross-border duplicates: one merge for the whole partition
            border.merge_best(best, best_pos, *(torch.cat([f[j] for f in found]) for j in range(3)))
        keep = own | (best > float("-inf"))
    else:
        keep = torch.zeros(0, dtype=torch.bool, device=dev)
        by_rank = torch.zeros(0, dtype=torch.int64, device=dev)
    idx = torch.nonzero(keep).flatten()
    matched = best_pos[idx] >= 0
    partner = torch.where(matched, by_rank[best_pos[idx].clamp(min=0)] if n else best_pos[idx], -1)
    has = matched.cpu().numpy()
    partner_host = np.where(has, _frame.to_host(partner), 0)
    idx_host = _frame.to_host(idx)
    value = best[idx]
    value = torch.where(matched, value, torch.full_like(value, float("nan")))
    return backends.new_frame(
        df,
        {
            "_row": backends.take(df["_row"], idx_host),
            "cluster": backends.new_column(df, home[idx], "int32"),
            "max_similarity": backends.new_column(df, value, "float32"),
            "duplicate_of": backends.take(df["_id"], partner_host).where(
                backends.new_column(df, torch.from_numpy(has))
            ),
            "_pkey": backends.new_column(df, torch.where(matched, rank[partner.clamp(min=0)], float("nan")), "float64"),
            "_prow": backends.new_column(df, torch.where(matched, row[partner.clamp(min=0)], -1), "int64"),
        },
    )
