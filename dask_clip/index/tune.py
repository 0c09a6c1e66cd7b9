"""Step 5 of a build: choose the default ``nprobe`` from the data, for a recall target.

Recall depends on the data as much as on the index (how many lists a neighbourhood spans), so
a rule of thumb alone is either slow or wrong somewhere. After the merge, ``TUNE_QUERIES``
rows of the training sample are searched with ``nprobe`` = 1, 2, 4, ... and compared with a
scan of every list (exact for ``Flat`` codes, exact-under-the-codes for ``SQ8``/``PQ``); the
default is the smallest ``nprobe`` whose leave-one-out recall@10 reaches the target. The query
rows are in the index, and each finds itself (its own list is visited first), so that one hit
is not counted.

Skipped — the rule of :func:`~dask_clip.index.keys.default_nprobe` applies — for on-disk
lists larger than the memory budget (a full scan per query would read the whole file from
disk) and above ``TUNE_MAX_VECTORS``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .train import import_faiss

__all__ = ["DEFAULT_RECALL_TARGET", "TUNE_MAX_VECTORS", "TUNE_QUERIES", "tune_nprobe"]

logger = logging.getLogger(__name__)

DEFAULT_RECALL_TARGET = 0.97
TUNE_QUERIES = 128
TUNE_MAX_VECTORS = 20_000_000
TUNE_K = 10


def _recall(truth: np.ndarray, found: np.ndarray, k: int) -> float:
    """Mean of (|truth ∩ found| - 1) / k: top-(k+1) id sets, the query's own hit discounted."""
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) - 1 for t, f in zip(truth, found)]
    return float(np.clip(np.asarray(hits, dtype=np.float64) / k, 0, 1).mean())


def tune_nprobe(
    index: Any, queries: np.ndarray, *, target: float = DEFAULT_RECALL_TARGET, k: int = TUNE_K
) -> tuple[int, dict[int, float]]:
    """The smallest power-of-two ``nprobe`` whose recall@k reaches ``target`` on ``queries``.

    Parameters
    ----------
    index
        A merged IVF index (inner product).
    queries
        float32 (Q, D) unit rows that are in the index (e.g. from the training sample).
    target
        Recall@k to reach.
    k
        Neighbours compared.

    Returns
    -------
    nprobe : int
        ``nlist`` where no smaller value reaches the target.
    recalls : dict of int to float
        Recall@k for each ``nprobe`` tried.
    """
    faiss = import_faiss()
    ivf = faiss.extract_index_ivf(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = min(k + 1, int(index.ntotal))
    _, truth = index.search(queries, depth, params=faiss.SearchParametersIVF(nprobe=ivf.nlist))
    recalls: dict[int, float] = {}
    nprobe = 1
    while True:
        nprobe = min(nprobe, ivf.nlist)
        _, found = index.search(queries, depth, params=faiss.SearchParametersIVF(nprobe=nprobe))
        recalls[nprobe] = round(_recall(truth, found, depth - 1), 4) if depth > 1 else 1.0
        if recalls[nprobe] >= target or nprobe == ivf.nlist:
            logger.info("nprobe %d: recall@%d %.3f on %d sample rows", nprobe, k, recalls[nprobe], len(queries))
            return nprobe, recalls
        nprobe *= 2
