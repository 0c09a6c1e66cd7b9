"""dask_clip: CLIP image embeddings appended to Dask DataFrames."""

from __future__ import annotations

from .cluster import local_cluster
from .embedder import ImageEmbedder
from .errors import DaskClipError, ImageDecodeError, ModelLoadError
from .io import read_images
from .spec import ModelSpec
from .writer import write_parquet

__all__ = [
    "DaskClipError",
    "ImageDecodeError",
    "ImageEmbedder",
    "ModelLoadError",
    "ModelSpec",
    "local_cluster",
    "read_images",
    "write_parquet",
]
__version__ = "0.1.0"
