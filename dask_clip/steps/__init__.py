"""Steps: what a job computes between its reader and its writer (:mod:`.base` for the protocol
and :func:`apply`; :mod:`.embed` for the image and text embedding steps)."""

from __future__ import annotations

from .base import IMAGE, Step, apply, run_steps
from .embed import ImageEmbedding, TextEmbedding

__all__ = ["IMAGE", "ImageEmbedding", "Step", "TextEmbedding", "apply", "run_steps"]
