"""How many candidate pairs a border row would bring if border rows travelled as sketches.

An estimate on a sample, taken before the graph is built: :func:`.border.sketch_pays_off` turns
it into the choice of shipping border rows as sketches or with their embeddings. Apart from
:mod:`.border` because it assigns rows to centroids (:mod:`.assign`), which itself splits
border rows with :mod:`.border`.
"""

from __future__ import annotations

import numpy as np

from .assign import nearest_centroid, nearest_centroid_and_border
from .border import SKETCH_SLACK, sketch

__all__ = ["ESTIMATE_ROWS", "ESTIMATE_ROWS_PER_CENTROID", "candidates_per_border_row"]

# Sampled rows per centroid for the estimate when the centroids are given (no k-means sample).
ESTIMATE_ROWS_PER_CENTROID = 16

# Held-out rows whose border rows the estimate of :func:`candidates_per_border_row` tests.
ESTIMATE_ROWS = 1024


def candidates_per_border_row(
    rows: np.ndarray,
    own_rows: np.ndarray,
    centroids: np.ndarray,
    scale: float,
    basis: np.ndarray,
    threshold: float,
    *,
    own_weight: float,
    max_rows: int = ESTIMATE_ROWS,
) -> float:
    """Estimated candidate pairs (:func:`.border.sketch_candidates`) per border row, from a sample.

    The border rows of up to ``max_rows`` of ``rows`` are tested against the rows of
    ``own_rows`` nearest to each host cluster; each pass counts ``own_weight`` times (the input
    rows one row of ``own_rows`` stands for).

    Parameters
    ----------
    rows
        float32 ``(m, d)``: rows whose border rows are tested (held-out sample rows).
    own_rows
        float32 ``(n, d)``: rows standing for the clusters' own rows (the training sample).
    centroids, scale, basis, threshold
        As in the run: unit centroids ``(k, d)``, :func:`.border.margin_scale`,
        :func:`.border.sketch_basis`, :func:`.border.duplicate_threshold`.
    own_weight
        Input rows per row of ``own_rows``.
    """
    import torch

    c = torch.as_tensor(np.asarray(centroids, np.float32))
    q = torch.as_tensor(np.asarray(basis, np.float32))
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(rows[:max_rows], np.float32)), dim=1)
    o = torch.nn.functional.normalize(torch.as_tensor(np.asarray(own_rows, np.float32)), dim=1)
    _, _, (r, h, _) = nearest_centroid_and_border(x, c, scale)
    if r.numel() == 0 or o.shape[0] == 0:
        return 0.0
    labels, _ = nearest_centroid(o, c)
    by_label = torch.argsort(labels.to(torch.int64), stable=True)
    bounds = torch.searchsorted(labels.to(torch.int64)[by_label], torch.arange(c.shape[0] + 1)).tolist()
    sx, so = sketch(x, q), sketch(o, q)
    by_host = torch.argsort(h, stable=True)
    hosts, counts = torch.unique_consecutive(h[by_host], return_counts=True)
    passed, start = 0, 0
    for host, size in zip(hosts.tolist(), counts.tolist()):
        g = r[by_host[start : start + size]]
        start += size
        own = by_label[bounds[host] : bounds[host + 1]]
        if own.numel():
            passed += int((sx[g] @ so[own].T >= threshold - SKETCH_SLACK).sum())
    return passed * own_weight / r.numel()
