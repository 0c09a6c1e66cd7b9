"""The per-process cache of loaded heads: each worker loads a head once, next to its model.

Keyed by value (the spec and the frozen head), like the model cache
(:func:`dask_clip.models.get_model`); cleared with the other worker caches
(:func:`dask_clip.runtime.caches.clear_all`).
"""

from __future__ import annotations

import threading

from ..models.cache import get_model
from ..models.spec import ModelSpec
from ..runtime import caches
from .base import Head, HeadFunction

__all__ = ["clear_heads", "get_head"]

_HEADS: dict[tuple[ModelSpec, Head], HeadFunction] = {}
_LOCK = threading.Lock()


def get_head(spec: ModelSpec, head: Head) -> HeadFunction:
    """The process's loaded ``head`` for the model of ``spec`` (loaded once, thread-safe).

    Returns
    -------
    HeadFunction
        ``HeadInputs -> values``, on the model's device.

    Raises
    ------
    ValueError
        The head was made for embeddings of another width than the model's.
    """
    key = (spec, head)
    loaded = _HEADS.get(key)
    if loaded is None:
        model = get_model(spec)
        with _LOCK:
            loaded = _HEADS.get(key)
            if loaded is None:
                dim = head.input_dim()
                if dim is not None and dim != model.embed_dim:  # hf-hub models are only known here
                    raise ValueError(
                        f"head {head.column!r} was made for {dim}-d embeddings, but {spec.describe()} gives "
                        f"{model.embed_dim}-d ones; use the model the head was trained on"
                    )
                loaded = head.load(model)
                _HEADS[key] = loaded
    return loaded


def clear_heads() -> None:
    """Drop this process's loaded heads."""
    with _LOCK:
        _HEADS.clear()


caches.register("heads", clear_heads)
