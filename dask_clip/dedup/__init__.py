"""Semantic deduplication (SemDeDup) of a Dask DataFrame of CLIP embeddings.

One module per step: :mod:`.kmeans` (spherical k-means on a sample, faiss), :mod:`.assign`
(nearest centroid and keep-rule key per row), :mod:`.pairwise` (blocked within-cluster max
similarity), :mod:`.workflow` (the Dask graph), :mod:`.results` (keep masks, pairs, summary),
:mod:`.exact` (identical bytes) and :mod:`.parquet` (Parquet in and out).
"""

from __future__ import annotations

from ..validation import KEEP_RULES
from .exact import exact_duplicates
from .kmeans import train_centroids
from .pairwise import max_similarity_to_earlier
from .parquet import dedup_parquet
from .results import dedup_summary, duplicate_pairs, keep_masks
from .workflow import semantic_dedup

__all__ = [
    "KEEP_RULES",
    "dedup_parquet",
    "dedup_summary",
    "duplicate_pairs",
    "exact_duplicates",
    "keep_masks",
    "max_similarity_to_earlier",
    "semantic_dedup",
    "train_centroids",
]
