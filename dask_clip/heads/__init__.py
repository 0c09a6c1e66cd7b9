"""Heads: small models on the embeddings, computed in the same pass, one output column each.

A head is a frozen, picklable dataclass (its configuration travels in the task graph, like a
:class:`~dask_clip.spec.ModelSpec`); each worker loads it once, on the model's device, next to
the CLIP model it reads from (:func:`dask_clip.models.get_head`). See :class:`Head` for how to
write one.
"""

from __future__ import annotations

from .base import Head, HeadFunction, HeadInputs

__all__ = ["Head", "HeadFunction", "HeadInputs"]
