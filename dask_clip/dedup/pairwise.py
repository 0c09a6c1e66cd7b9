"""Step 3: inside each cluster, every row's largest cosine similarity to a row ranked ahead of it.

The work is done in ``(block_size, block_size)`` tiles of the lower triangle, so a cluster of
``n`` rows costs ``n**2 / 2`` dot products but never more than one tile of memory: a cluster of
300k rows (SemDeDup's largest on LAION) needs 4 MiB of similarities at a time, not 360 GB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from . import _frame

__all__ = ["PAIRWISE_BLOCK_SIZE", "dedup_partition", "max_similarity_to_earlier"]

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

    Returns
    -------
    DataFrame
        Same backend and row order, columns ``_row`` (int64), ``cluster`` (int32),
        ``max_similarity`` (float32, NaN for the first row of its cluster) and
        ``duplicate_of`` (the id of the row attaining it, null for the first row).

    Notes
    -----
    Rows are ranked within a cluster by ``(_rank, _row)``; ``_row`` follows the global input
    order, so ties are broken the same way on every partitioning.
    """
    import torch

    x, _ = backends.embedding_matrix(df["_emb"], device=device)
    if x.shape[0] != len(df):
        raise ValueError("the cluster shuffle received rows without an embedding")
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
        _, counts = torch.unique_consecutive(cluster[order], return_counts=True)
        start = 0
        for size in counts.tolist():
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
