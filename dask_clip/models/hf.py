"""Hugging Face transformers CLIP models behind the interface the pipeline runs (the ``hf`` extra).

NeMo Curator's ``ImageEmbeddingStage`` keeps ``openai/clip-vit-large-patch14`` as a transformers
folder (``CLIPModel.from_pretrained``). :class:`TransformersCLIP` wraps such a model with
open_clip's two methods, ``encode_image`` and ``encode_text``, so that batching, autocast,
out-of-memory halving and the heads run on it unchanged; its preprocessing is read from the
folder's own image processor config (:func:`dask_clip.models.families._transformers_files.transformers_image_config`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..image.preprocess import PreprocessConfig
from .families._transformers_files import transformers_image_config
from .spec import require_transformers

__all__ = ["TransformersCLIP", "load_transformers_clip", "preprocess_config"]

logger = logging.getLogger(__name__)


def preprocess_config(folder: str | Path) -> PreprocessConfig:
    """dask_clip's :class:`~dask_clip.image.preprocess.PreprocessConfig` for a transformers CLIP folder.

    transformers' ``CLIPImageProcessor`` resizes the shortest side (bicubic, antialiased),
    centre-crops, rescales by 1/255 and normalises: the steps of
    :func:`dask_clip.image.preprocess.resize_crop` and :func:`~dask_clip.image.preprocess.normalize`.
    """
    image = transformers_image_config(folder)
    return PreprocessConfig(
        size=image.size,
        mean=image.mean,
        std=image.std,
        interpolation=image.interpolation,
        resize_mode=image.resize_mode,
        crop_offset="floor",  # transformers' center_crop: (overhang) // 2
    )


def _features(output: Any) -> torch.Tensor:
    """The projected features of ``get_image_features``/``get_text_features``.

    transformers 4 returns the (N, D) tensor; transformers 5 returns a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds it (taking another field there
    gives the hidden states: NeMo Curator PR #1724's "263K dims instead of 768").
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
        raise TypeError(f"unexpected output of a transformers CLIP feature method: {type(output).__name__}")
    return pooled


class TransformersCLIP(torch.nn.Module):
    """A transformers ``CLIPModel`` with open_clip's ``encode_image``/``encode_text``.

    Parameters
    ----------
    clip
        A ``transformers.CLIPModel``.
    preprocess
        Its image preprocessing, from the folder's config.
    """

    def __init__(self, clip: Any, preprocess: PreprocessConfig) -> None:
        super().__init__()
        self.clip = clip
        self.preprocess_config = preprocess

    @property
    def logit_scale(self) -> torch.Tensor:
        """log of the softmax temperature's inverse, as in open_clip (``logit_scale.exp()`` is ~100)."""
        return self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (N, 3, H, W) normalised pixels -> (N, D) projected image features (not normalised)."""
        return _features(self.clip.get_image_features(pixel_values=pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """int64 (N, L) token ids (+ mask) -> (N, D) projected text features (not normalised)."""
        return _features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_transformers_clip(folder: str | Path) -> TransformersCLIP:
    """Load a transformers CLIP folder (float32, eval mode, on the CPU).

    Raises
    ------
    ImportError
        transformers is not installed (the message says how to install it).
    ModelLoadError
        transformers could not read the folder.
    """
    require_transformers()
    from transformers import CLIPModel

    preprocess = preprocess_config(folder)
    try:
        # float32 whatever the checkpoint's dtype (transformers 5 loads it as stored by default).
        clip = CLIPModel.from_pretrained(str(folder)).float()
    except Exception as err:  # transformers raises OSError, ValueError, RuntimeError ... for bad folders
        raise ModelLoadError(f"transformers could not load the CLIP model in {str(folder)!r}: {err}") from err
    return TransformersCLIP(clip, preprocess)
