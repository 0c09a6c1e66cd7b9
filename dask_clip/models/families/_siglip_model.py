"""A transformers ``SiglipModel`` behind open_clip's two methods (imports torch: loaded lazily by
:mod:`dask_clip.models.families.transformers_siglip`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import ModelLoadError
from ...image.preprocess import PreprocessConfig
from ..hf import TransformersCLIP
from ..spec import require_package
from ._transformers_files import ImageConfig

__all__ = ["TransformersSiglip", "load_transformers_siglip"]


class TransformersSiglip(TransformersCLIP):
    """A transformers ``SiglipModel`` with open_clip's ``encode_image``/``encode_text`` and its
    ``logit_scale``/``logit_bias`` (the zero-shot heads score with its sigmoid).

    ``get_image_features``/``get_text_features`` have CLIP's signatures, so the methods are
    :class:`~dask_clip.models.hf.TransformersCLIP`'s; the attribute keeps CLIP's name, ``clip``.
    """

    @property
    def logit_bias(self) -> torch.Tensor:
        """The learnt bias of SigLIP's sigmoid (``sigmoid(scale * cos + bias)``), about -10 when trained."""
        return self.clip.logit_bias


def load_transformers_siglip(folder: str | Path, image: ImageConfig) -> TransformersSiglip:
    """Load a transformers SigLIP folder (float32, eval mode, on the CPU).

    Parameters
    ----------
    folder
        A ``SiglipModel`` folder.
    image
        Its image processor config (:func:`~dask_clip.models.families._transformers_files.transformers_image_config`).

    Raises
    ------
    ImportError
        transformers is not installed (the message says how to install it).
    ModelLoadError
        transformers could not read the folder.
    """
    require_package("transformers", "dask-clip[hf]", what="transformers SigLIP")
    from transformers import SiglipModel

    preprocess = PreprocessConfig(
        size=image.size,
        mean=image.mean,
        std=image.std,
        interpolation=image.interpolation,
        resize_mode=image.resize_mode,
    )
    try:
        model = SiglipModel.from_pretrained(str(folder)).float()
    except Exception as err:  # OSError, ValueError, RuntimeError ... for a bad folder
        raise ModelLoadError(f"transformers could not load the SigLIP model in {str(folder)!r}: {err}") from err
    return TransformersSiglip(model, preprocess)
