"""Semantic deduplication (SemDeDup) of a Dask DataFrame of CLIP embeddings.

One module per step: :mod:`.kmeans` (spherical k-means on a sample, faiss), :mod:`.assign`
(nearest centroid, keep-rule key and border rows per row), :mod:`.border` (the margin that
finds pairs across cluster borders), :mod:`.pairwise` (blocked within-cluster max similarity),
:mod:`.budget` (the memory budget and the shuffle plan), :mod:`.workflow` (the Dask graph),
:mod:`.results` (keep masks, pairs, summary), :mod:`.exact` (identical bytes) and
:mod:`.parquet` (Parquet in and out, larger than memory), :mod:`.phash` (perceptual hashes and
their Hamming near-duplicates) and :mod:`.plan` (exact -> phash -> semantic in order, the
removal list and :func:`drop_duplicates`).
"""

from __future__ import annotations

from ..validation import KEEP_RULES
from .budget import BorderTooWideError, ClusterTooLargeError
from .exact import exact_duplicates
from .kmeans import train_centroids
from .pairwise import max_similarity_to_earlier
from .parquet import dedup_parquet
from .phash import image_hashes, phash_duplicates
from .plan import dedup_steps, drop_duplicates
from .results import dedup_summary, duplicate_pairs, keep_masks
from .workflow import DedupConfig, semantic_dedup

__all__ = [
    "KEEP_RULES",
    "BorderTooWideError",
    "ClusterTooLargeError",
    "DedupConfig",
    "dedup_parquet",
    "dedup_steps",
    "dedup_summary",
    "drop_duplicates",
    "duplicate_pairs",
    "exact_duplicates",
    "image_hashes",
    "keep_masks",
    "max_similarity_to_earlier",
    "phash_duplicates",
    "semantic_dedup",
    "train_centroids",
]
