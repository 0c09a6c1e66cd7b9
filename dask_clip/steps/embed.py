"""The embedding steps: images (with their heads and captions, in one pass on the same batches)
and captions alone. Each wraps the preset users configure and lives next to it
(:class:`~dask_clip.embed.embedder.ImageEmbedding`, :class:`~dask_clip.embed.text_embedder.TextEmbedding`),
so the same object runs alone (``embedder(ddf)``) or in a chain (:func:`~dask_clip.steps.apply`)."""

from __future__ import annotations

from ..embed.embedder import ImageEmbedding
from ..embed.text_embedder import TextEmbedding

__all__ = ["ImageEmbedding", "TextEmbedding"]
