"""Heads: small models on the embeddings, computed in the same pass, one output column each.

A head is a frozen, picklable dataclass (its configuration travels in the task graph, like a
:class:`~dask_clip.models.spec.ModelSpec`); each worker loads it once, on the model's device, next to
the CLIP model it reads from (:func:`dask_clip.heads.cache.get_head`). See :class:`Head` for how to
write one.

The heads shipped here (``docs/models.md``):

- :class:`AestheticHead`: LAION's improved aesthetic predictor, an AVA-like score of about 1-10;
- :class:`NSFWHead`: LAION's CLIP-based NSFW detector, a probability in [0, 1];
- :func:`zero_shot_heads` (:class:`ZeroShotLabel`, :class:`ZeroShotProbability`,
  :class:`ZeroShotProbabilities`): open_clip's zero-shot classification over label names.

The CLIP score (image-caption cosine) needs the caption's embedding too: it is
``ImageEmbedder(text_column=...)``'s ``clip_score`` column.
"""

from __future__ import annotations

from .aesthetic import AestheticHead
from .base import Head, HeadFunction, HeadInputs
from .nsfw import NSFWHead
from .zero_shot import (
    DEFAULT_TEMPLATES,
    ZeroShotLabel,
    ZeroShotProbabilities,
    ZeroShotProbability,
    read_labels,
    zero_shot_heads,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "AestheticHead",
    "Head",
    "HeadFunction",
    "HeadInputs",
    "NSFWHead",
    "ZeroShotLabel",
    "ZeroShotProbabilities",
    "ZeroShotProbability",
    "read_labels",
    "zero_shot_heads",
]
