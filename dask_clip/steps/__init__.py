"""Steps: what a job computes between its reader and its writer (:mod:`.base` for the protocol
and :func:`apply`; :mod:`.embed` for the image and text embedding steps, which live next to
their presets and are imported on first use: the embedders import this package's base)."""

from __future__ import annotations

from typing import Any

from .base import IMAGE, Step, apply, run_steps

__all__ = ["IMAGE", "ImageEmbedding", "Step", "TextEmbedding", "apply", "run_steps"]


def __getattr__(name: str) -> Any:
    if name in ("ImageEmbedding", "TextEmbedding"):
        from . import embed

        return getattr(embed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
