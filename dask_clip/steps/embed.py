"""The embedding steps: images (with their heads and captions, in one pass on the same batches)
and captions alone. Each wraps the preset users configure and lives next to it
(:class:`~dask_clip.embedder.ImageEmbedding`, :class:`~dask_clip.text_embedder.TextEmbedding`),
so the same object runs alone (``embedder(ddf)``) or in a chain (:func:`~dask_clip.steps.apply`)."""

from __future__ import annotations

from ..embedder import ImageEmbedding
from ..text_embedder import TextEmbedding

__all__ = ["ImageEmbedding", "TextEmbedding"]
