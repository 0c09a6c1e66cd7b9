"""Tiny models and sample data for the tests, the benchmarks and the docs' examples.

Not imported by the package at run time (the CLI and the demo do not import it; the demo's
random model is :mod:`dask_clip.models.random_weights`). Imports torch.
"""

from __future__ import annotations

from .images import (
    CAPTIONS,
    WEB_IMAGE_KINDS,
    WebImage,
    encode_image,
    odd_images,
    photo_crops,
    photo_like,
    png_bomb,
    solid_png,
    web_images,
)
from .models import (
    TINY_MODEL_CFG,
    TINY_TEXT_MODEL_CFG,
    TRANSFORMERS_CONFIGS,
    write_aesthetic_weights,
    write_model_dir,
    write_nsfw_weights,
    write_transformers_model_dir,
)
from .reference import ProjectionHead, clustered_embeddings, embedding_array, parity, reference_embeddings

__all__ = [
    "CAPTIONS",
    "TINY_MODEL_CFG",
    "TINY_TEXT_MODEL_CFG",
    "TRANSFORMERS_CONFIGS",
    "WEB_IMAGE_KINDS",
    "ProjectionHead",
    "WebImage",
    "clustered_embeddings",
    "embedding_array",
    "encode_image",
    "odd_images",
    "parity",
    "photo_crops",
    "photo_like",
    "png_bomb",
    "reference_embeddings",
    "solid_png",
    "web_images",
    "write_aesthetic_weights",
    "write_model_dir",
    "write_nsfw_weights",
    "write_transformers_model_dir",
]
