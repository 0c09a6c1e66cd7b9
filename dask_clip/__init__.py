"""dask_clip: CLIP image embeddings appended to Dask DataFrames.

The public names are imported on first use, so ``import dask_clip.worker_setup`` (which
``dask worker --preload`` does in the launcher process too) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import local_cluster
    from .embedder import ImageEmbedder
    from .errors import DaskClipError, ImageDecodeError, ModelLoadError
    from .io import read_images
    from .spec import ModelSpec
    from .webdataset import read_webdataset
    from .writer import write_parquet

_EXPORTS = {
    "DaskClipError": "errors",
    "ImageDecodeError": "errors",
    "ImageEmbedder": "embedder",
    "ModelLoadError": "errors",
    "ModelSpec": "spec",
    "local_cluster": "cluster",
    "read_images": "io",
    "read_webdataset": "webdataset",
    "write_parquet": "writer",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # cache: later look-ups skip this function
        return value
    raise AttributeError(f"module 'dask_clip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
