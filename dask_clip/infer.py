"""Batched forward passes through the image encoder, with out-of-memory back-off."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .models import LoadedModel
from .preprocess import preprocess_batch

__all__ = ["encode_images", "is_out_of_memory"]

logger = logging.getLogger(__name__)


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA OOM from torch's allocator or from RMM (a plain ``RuntimeError``)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "bad_alloc" in text or "out_of_memory" in text
    )


def _forward(loaded: LoadedModel, images: Sequence[torch.Tensor], normalize: bool) -> torch.Tensor:
    pixels = preprocess_batch(images, loaded.preprocess, loaded.device)
    with torch.autocast(
        loaded.device.type,
        dtype=loaded.autocast_dtype or torch.float32,
        enabled=loaded.autocast_dtype is not None,
    ):
        features = loaded.model.encode_image(pixels)
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1) if normalize else features


def encode_images(
    loaded: LoadedModel, images: Sequence[torch.Tensor], *, batch_size: int, normalize: bool = True
) -> torch.Tensor:
    """Embed decoded images in batches; halve the batch on out-of-memory and remember it.

    Parameters
    ----------
    loaded
        The worker's model.
    images
        Each uint8 (H, W, 3) RGB.
    batch_size
        Images per forward pass (``model_inference_batch_size``); capped by
        ``loaded.batch_size_cap`` after an out-of-memory back-off.
    normalize
        L2-normalise each embedding.

    Returns
    -------
    torch.Tensor
        float32 (N, D) on the model's device.

    Raises
    ------
    RuntimeError
        Out of memory even with a batch of one image.
    """
    out = torch.empty((len(images), loaded.embed_dim), dtype=torch.float32, device=loaded.device)
    start = 0
    with torch.inference_mode():  # thread-local: must be entered inside the task
        while start < len(images):
            size = min(batch_size, loaded.batch_size_cap or batch_size)
            chunk = images[start : start + size]
            try:
                out[start : start + len(chunk)] = _forward(loaded, chunk, normalize)
            except Exception as err:
                if not is_out_of_memory(err) or len(chunk) == 1:
                    raise
                # min(): another task thread sharing this model may have lowered it already.
                loaded.batch_size_cap = max(1, min(len(chunk) // 2, loaded.batch_size_cap or len(chunk)))
                logger.warning(
                    "dask_clip: out of memory at batch %d; retrying with %d", len(chunk), loaded.batch_size_cap
                )
            else:
                start += len(chunk)
                continue
            # Out of the except block, the failed batch's activations (held by the traceback)
            # are free, so the cache can actually hand them back.
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
    return out
