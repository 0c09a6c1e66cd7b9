"""Batched forward passes through the image encoder, with out-of-memory back-off."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..image.preprocess import normalize, preprocess_batch
from ..models.loaded import LoadedModel

__all__ = ["CAP_PROBE_BATCHES", "encode_images", "encode_inputs", "is_out_of_memory"]

logger = logging.getLogger(__name__)

#: Batches in a row that must fit under a lowered batch-size cap before it is raised again.
CAP_PROBE_BATCHES = 64


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA OOM from torch's allocator or from RMM (a plain ``RuntimeError``)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "bad_alloc" in text or "out_of_memory" in text
    )


def _forward(
    loaded: LoadedModel, inputs: torch.Tensor, normalized: bool, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    pixels = inputs if normalized else normalize(inputs, loaded.preprocess)
    pixels = pixels.to(loaded.input_dtype)
    with torch.autocast(
        loaded.device.type,
        dtype=autocast_dtype or torch.float32,
        enabled=autocast_dtype is not None,
    ):
        features = loaded.model.encode_image(pixels)
    return features.float()


def _after_success(loaded: LoadedModel, size: int, requested: int) -> None:
    """Count a batch that fitted; raise a lowered cap after enough of them in a row."""
    if loaded.batch_size_cap is None or size < loaded.batch_size_cap:
        return
    loaded.batches_under_cap += 1
    if loaded.batches_under_cap >= CAP_PROBE_BATCHES:
        raised = loaded.batch_size_cap * 2
        loaded.batch_size_cap = None if raised >= requested else raised
        loaded.batches_under_cap = 0


def encode_inputs(
    loaded: LoadedModel,
    inputs: torch.Tensor,
    *,
    batch_size: int,
    normalized: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Embed the model's input in batches; halve the batch on out-of-memory and remember it.

    Parameters
    ----------
    loaded
        The worker's model.
    inputs
        (N, 3, H, W) on the model's device: uint8 crops from
        :func:`~dask_clip.image.preprocess.resize_crop`, or float32 already :func:`normalized
        <dask_clip.image.preprocess.normalize>`.
    batch_size
        Images per forward pass (``model_inference_batch_size``); capped by
        ``loaded.batch_size_cap`` after an out-of-memory back-off.
    normalized
        Whether ``inputs`` is already normalised.
    autocast_dtype
        Run under autocast to this dtype instead of the model's own setting (the pipeline's
        bf16 rerun of rows whose fp16 embedding overflowed).

    Returns
    -------
    torch.Tensor
        float32 (N, D) on the model's device, not normalised.

    Raises
    ------
    RuntimeError
        Out of memory even with a batch of one image.
    """
    out = torch.empty((len(inputs), loaded.embed_dim), dtype=torch.float32, device=loaded.device)
    start = 0
    with torch.inference_mode():  # thread-local: must be entered inside the task
        while start < len(inputs):
            size = min(batch_size, loaded.batch_size_cap or batch_size)
            chunk = inputs[start : start + size]
            try:
                out[start : start + len(chunk)] = _forward(
                    loaded, chunk, normalized, autocast_dtype or loaded.autocast_dtype
                )
            except Exception as err:
                if not is_out_of_memory(err) or len(chunk) == 1:
                    raise
                # min(): another task thread sharing this model may have lowered it already.
                loaded.batch_size_cap = max(1, min(len(chunk) // 2, loaded.batch_size_cap or len(chunk)))
                loaded.batches_under_cap = 0
                logger.warning(
                    "dask_clip: out of memory at batch %d; retrying with %d", len(chunk), loaded.batch_size_cap
                )
            else:
                start += len(chunk)
                _after_success(loaded, len(chunk), batch_size)
                continue
            # Out of the except block, the failed batch's activations (held by the traceback)
            # are free, so the cache can actually hand them back.
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def encode_images(
    loaded: LoadedModel, images: Sequence[torch.Tensor], *, batch_size: int, normalize: bool = True
) -> torch.Tensor:
    """Embed decoded images: resize, crop, normalise (:func:`~dask_clip.image.preprocess.preprocess_batch`)
    and :func:`encode_inputs`.

    Parameters
    ----------
    loaded
        The worker's model.
    images
        Each uint8 (H, W, 3) RGB.
    batch_size
        Images per forward pass.
    normalize
        L2-normalise each embedding.

    Returns
    -------
    torch.Tensor
        float32 (N, D) on the model's device.
    """
    inputs = preprocess_batch(images, loaded.preprocess, loaded.device)
    features = encode_inputs(loaded, inputs, batch_size=batch_size, normalized=True)
    return torch.nn.functional.normalize(features, dim=-1) if normalize else features
