"""dask_clip: CLIP image embeddings appended to Dask DataFrames.

The public names are imported on first use, so ``import dask_clip.worker_setup`` (which
``dask worker --preload`` does in the launcher process too) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arrays import embeddings_array as embeddings_array
    from .columns import embeddings_to_numpy as embeddings_to_numpy
    from .embed.embedder import ImageEmbedder as ImageEmbedder
    from .embed.jobs import embed_parquet as embed_parquet
    from .embed.text_embedder import TextEmbedder as TextEmbedder
    from .errors import DaskClipError as DaskClipError
    from .errors import ImageDecodeError as ImageDecodeError
    from .errors import ModelLoadError as ModelLoadError
    from .filter import filter_parquet as filter_parquet
    from .io.read import read_images as read_images
    from .io.webdataset import read_webdataset as read_webdataset
    from .io.writers.laion import write_laion as write_laion
    from .io.writers.lance import write_lance as write_lance
    from .io.writers.parquet import write_parquet as write_parquet
    from .models.spec import ModelSpec as ModelSpec
    from .runtime.cluster import local_cluster as local_cluster

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "DaskClipError": "errors",
    "ImageDecodeError": "errors",
    "ImageEmbedder": "embed.embedder",
    "ModelLoadError": "errors",
    "ModelSpec": "models.spec",
    "TextEmbedder": "embed.text_embedder",
    "embed_parquet": "embed.jobs",
    "embeddings_array": "arrays",
    "embeddings_to_numpy": "columns",
    "filter_parquet": "filter",
    "local_cluster": "runtime.cluster",
    "read_images": "io.read",
    "read_webdataset": "io.webdataset",
    "write_laion": "io.writers.laion",
    "write_lance": "io.writers.lance",
    "write_parquet": "io.writers.parquet",
}
__all__ = [
    "DaskClipError",
    "ImageDecodeError",
    "ImageEmbedder",
    "ModelLoadError",
    "ModelSpec",
    "TextEmbedder",
    "embed_parquet",
    "embeddings_array",
    "embeddings_to_numpy",
    "filter_parquet",
    "local_cluster",
    "read_images",
    "read_webdataset",
    "write_laion",
    "write_lance",
    "write_parquet",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # cache: later look-ups skip this function
        return value
    raise AttributeError(f"module 'dask_clip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
