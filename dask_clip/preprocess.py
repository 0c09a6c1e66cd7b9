"""Batched CLIP preprocessing in torch — the same code on CPU and GPU tensors.

It mirrors open_clip's eval transform (``open_clip.transform.image_transform``) for the
model's own :class:`~dask_clip.models.PreprocessConfig`: antialiased resize (bicubic or
bilinear) computed as Pillow computes it on uint8, centre crop (or centre pad for
``resize_mode="longest"``), then scaling to [0, 1] and per-channel normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .models import PreprocessConfig

__all__ = ["resize_crop", "preprocess_batch"]

# Images longer than this many crops along one axis are centre-cropped before resizing, so
# a 1 x 50000 strip does not become a 224 x 11-million-pixel intermediate.
_MAX_ASPECT = 16


def _resized_size(height: int, width: int, cfg: PreprocessConfig) -> list[int]:
    target_h, target_w = cfg.size
    if cfg.resize_mode == "squash":
        return [target_h, target_w]
    if cfg.resize_mode == "shortest" and target_h == target_w:
        # One number: torchvision sizes the long side exactly as open_clip's Resize(int) does.
        return [target_h]
    # open_clip's ResizeKeepRatio (shortest with a non-square target, or longest).
    ratio_h, ratio_w = height / target_h, width / target_w
    ratio = max(ratio_h, ratio_w) if cfg.resize_mode == "longest" else min(ratio_h, ratio_w)
    return [max(1, round(height / ratio)), max(1, round(width / ratio))]


def _center_crop_or_pad(image: torch.Tensor, size: tuple[int, int], fill: int) -> torch.Tensor:
    from open_clip.transform import center_crop_or_pad

    return center_crop_or_pad(image, list(size), fill=fill)


def resize_crop(image: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Resize and crop one image to the model's input size, staying in uint8.

    Parameters
    ----------
    image
        uint8 (3, H, W) RGB, on any device.
    cfg
        The model's preprocessing.

    Returns
    -------
    torch.Tensor
        uint8 (3, size[0], size[1]) on the input's device.
    """
    height, width = image.shape[-2:]
    if cfg.resize_mode == "shortest" and max(height, width) > _MAX_ASPECT * min(height, width):
        keep = _MAX_ASPECT * min(height, width)
        image = F.center_crop(image, [min(height, keep), min(width, keep)])
        height, width = image.shape[-2:]
    interpolation = (
        InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else InterpolationMode.BICUBIC
    )
    resized = F.resize(image, _resized_size(height, width, cfg), interpolation=interpolation, antialias=True)
    if cfg.resize_mode == "squash":
        return resized
    if cfg.resize_mode == "longest":
        return _center_crop_or_pad(resized, cfg.size, cfg.fill_color)
    return F.center_crop(resized, list(cfg.size))


def preprocess_batch(
    images: Sequence[torch.Tensor], cfg: PreprocessConfig, device: torch.device
) -> torch.Tensor:
    """Preprocess a batch of decoded images into the model's input.

    Parameters
    ----------
    images
        Each uint8 (H, W, 3) RGB, any sizes, on CPU or on ``device``.
    cfg
        The model's preprocessing.
    device
        Where to resize and normalise (the model's device).

    Returns
    -------
    torch.Tensor
        float32 (N, 3, size[0], size[1]) on ``device``, normalised with ``cfg.mean``/``cfg.std``.
    """
    crops = [resize_crop(img.to(device, non_blocking=True).permute(2, 0, 1), cfg) for img in images]
    batch = torch.stack(crops).to(torch.float32).div_(255.0)
    mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)
