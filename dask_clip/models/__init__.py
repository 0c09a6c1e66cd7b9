"""Models: the per-process cache (:mod:`.cache`), the loaded model (:mod:`.loaded`), where
weights come from (:mod:`.hub`) and the model families, a registry (:mod:`.families`).

The names of the former ``dask_clip.models`` module are here, imported on first use, so that
importing this package (e.g. for :func:`~dask_clip.models.families.detect_model_dir` on the
client) does not import torch. Code inside dask_clip imports the submodules themselves.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedModel": "loaded",
    "RANDOM_WEIGHTS_SEED": "families.open_clip",
    "_autocast_dtype": "loaded",
    "_create": "cache",
    "_load": "cache",
    "apply_torch_threads": "cache",
    "check_hub_config": "hub",
    "clear_cache": "cache",
    "get_model": "cache",
    "gpu_share": "cache",
    "load_counts": "cache",
    "refuse_remote_code": "hub",
    "resolve_device": "loaded",
    "set_torch_threads": "cache",
    "to_low_precision": "loaded",
    "weights_dtype": "loaded",
}
__all__ = [
    "LoadedModel",
    "apply_torch_threads",
    "clear_cache",
    "get_head",
    "get_model",
    "gpu_share",
    "load_counts",
    "resolve_device",
    "set_torch_threads",
    "to_low_precision",
]


def get_head(spec: Any, head: Any) -> Any:
    """The process's loaded ``head`` for ``spec``: :func:`dask_clip.heads.cache.get_head` (kept here
    for code that imports it from this module; the head cache lives with the heads)."""
    from ..heads.cache import get_head as cached_head

    return cached_head(spec, head)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
