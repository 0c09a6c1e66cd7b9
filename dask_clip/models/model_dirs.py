"""What a ``model_dir`` holds: the former home of folder detection, kept for code that imports
it. Detection now lives with each model family (:mod:`dask_clip.models.families`)."""

from __future__ import annotations

from .families import detect_model_dir
from .families.base import (
    OPEN_CLIP,
    TRANSFORMERS,
    WEIGHT_FILE_PATTERNS,
    ModelDir,
    check_no_remote_code,
    check_regular_files,
    find_weights,
)
from .families.transformers import NEMO_CLIP_SUBDIR, ImageConfig, transformers_image_config

__all__ = [
    "NEMO_CLIP_SUBDIR",
    "OPEN_CLIP",
    "TRANSFORMERS",
    "WEIGHT_FILE_PATTERNS",
    "ImageConfig",
    "ModelDir",
    "check_no_remote_code",
    "check_regular_files",
    "detect_model_dir",
    "find_weights",
    "transformers_image_config",
]
