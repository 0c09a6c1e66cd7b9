"""Batched CLIP preprocessing in torch — the same code on CPU and GPU tensors.

It mirrors open_clip's eval transform (``open_clip.transform.image_transform``) for the
model's own :class:`PreprocessConfig`: antialiased resize (bicubic or
bilinear) computed as Pillow computes it on uint8, centre crop (or centre pad for
``resize_mode="longest"``), then scaling to [0, 1] and per-channel normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["PreprocessConfig", "preprocess_batch", "prereduce", "prereduce_factors", "resize_crop"]


@dataclass(frozen=True)
class PreprocessConfig:
    """The eval-time preprocessing of one model, as open_clip configured it.

    Attributes
    ----------
    size : tuple of int
        Output (height, width).
    mean, std : tuple of float
        Per-channel normalisation, RGB.
    interpolation : str
        ``"bicubic"`` or ``"bilinear"``.
    resize_mode : str
        ``"shortest"`` (resize shortest side, centre crop), ``"longest"`` (resize longest
        side, centre pad) or ``"squash"`` (resize to ``size`` ignoring aspect).
    fill_color : int
        Padding value for ``"longest"``.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> PreprocessConfig:
        """Read the config open_clip attached to ``model`` (``get_model_preprocess_cfg``)."""
        from open_clip import get_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg

        cfg = PreprocessCfg(**get_model_preprocess_cfg(model))
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        # open_clip evaluates "random" interpolation as bicubic.
        interpolation = "bilinear" if cfg.interpolation == "bilinear" else "bicubic"
        return cls(
            size=(int(size[0]), int(size[1])),
            mean=tuple(float(m) for m in cfg.mean),
            std=tuple(float(s) for s in cfg.std),
            interpolation=interpolation,
            resize_mode=cfg.resize_mode,
            fill_color=int(cfg.fill_color),
        )


# Images longer than this many crops along one axis are centre-cropped before resizing, so
# a 1 x 50000 strip does not become a 224 x 11-million-pixel intermediate.
_MAX_ASPECT = 16
# Largest downscale factor one antialiased resize is asked for. torch's CUDA antialias
# kernel keeps its filter taps in shared memory and refuses bicubic float32 factors above
# about 47 ("Too much shared memory required", vision#7671); beyond this factor an integer
# box pre-reduction comes first, on every device, so CPU and GPU compute the same thing.
MAX_AA_SCALE = 32


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


def _output_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """The (H, W) that ``F.resize`` produces for ``_resized_size`` (torchvision's rule)."""
    size = _resized_size(height, width, cfg)
    if len(size) == 2:
        return size[0], size[1]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size[0] * long / short)
    return (size[0], new_long) if height <= width else (new_long, size[0])


def prereduce_factors(
    height: int, width: int, out_height: int, out_width: int, max_scale: float = MAX_AA_SCALE
) -> tuple[int, int]:
    """Integer box-reduction factors that keep a later antialiased resize within ``max_scale``.

    Parameters
    ----------
    height, width
        Input size.
    out_height, out_width
        Size the image is then resized to.
    max_scale
        Largest downscale factor left for the antialiased resize.

    Returns
    -------
    (int, int)
        Factors (kh, kw) >= 1; (1, 1) when no pre-reduction is needed. After reducing by
        them, each axis is downscaled by at most ``max_scale`` and (when reduced) by at least
        ``max_scale / 2``, so the antialiasing filter still does the bulk of the work.
    """
    factors = []
    for size, out in ((height, out_height), (width, out_width)):
        scale = size / max(out, 1)
        factors.append(1 if scale <= max_scale else math.ceil(scale / max_scale))
    return factors[0], factors[1]


def prereduce(image: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Box-average (area) reduction by integer factors, as Pillow's ``Image.reduce`` does.

    Parameters
    ----------
    image
        uint8 (..., C, H, W) on any device.
    factors
        (kh, kw) from :func:`prereduce_factors`.

    Returns
    -------
    torch.Tensor
        uint8 (..., C, ceil(H / kh), ceil(W / kw)), rounded; edge boxes average only the
        pixels they cover.
    """
    if factors == (1, 1):
        return image
    lead = image.shape[:-3]
    flat = image.reshape(-1, *image.shape[-3:]).to(torch.float32)
    reduced = torch.nn.functional.avg_pool2d(
        flat, kernel_size=factors, stride=factors, ceil_mode=True, count_include_pad=False
    )
    return reduced.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, *reduced.shape[-3:])


def _center_crop_or_pad(image: torch.Tensor, size: tuple[int, int], fill: int) -> torch.Tensor:
    from open_clip.transform import center_crop_or_pad

    return center_crop_or_pad(image, list(size), fill=fill)


def resize_crop(image: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Resize and crop one image to the model's input size, staying in uint8.

    Parameters
    ----------
    image
        uint8 (3, H, W) RGB, or a batch (N, 3, H, W) of one size, on any device.
    cfg
        The model's preprocessing.

    Returns
    -------
    torch.Tensor
        uint8 (3, size[0], size[1]) (or (N, 3, ...)) on the input's device.
    """
    height, width = image.shape[-2:]
    if cfg.resize_mode == "shortest" and max(height, width) > _MAX_ASPECT * min(height, width):
        keep = _MAX_ASPECT * min(height, width)
        image = F.center_crop(image, [min(height, keep), min(width, keep)])
        height, width = image.shape[-2:]
    interpolation = InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else InterpolationMode.BICUBIC
    size = _resized_size(height, width, cfg)
    factors = prereduce_factors(height, width, *_output_size(height, width, cfg))
    if factors != (1, 1):
        # Very large downscales: box-reduce first, then resize to the size the full image
        # would have been given (not recomputed from the rounded reduced size).
        image, size = prereduce(image, factors), list(_output_size(height, width, cfg))
    resized = F.resize(image, size, interpolation=interpolation, antialias=True)
    if cfg.resize_mode == "squash":
        return resized
    if cfg.resize_mode == "longest":
        return _center_crop_or_pad(resized, cfg.size, cfg.fill_color)
    return F.center_crop(resized, list(cfg.size))


def preprocess_batch(images: Sequence[torch.Tensor], cfg: PreprocessConfig, device: torch.device) -> torch.Tensor:
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
    # Images of the same size are resized as one (N, 3, H, W) batch: one kernel launch per
    # size instead of per image (what keeps a GPU busy); per-image results are unchanged.
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((tuple(img.shape), img.device), []).append(i)
    crops: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
    for members in groups.values():
        if len(members) == 1:
            img = images[members[0]].to(device, non_blocking=True)
            crops[members[0]] = resize_crop(img.permute(2, 0, 1), cfg)
            continue
        same = torch.stack([images[i] for i in members]).to(device, non_blocking=True)
        for i, crop in zip(members, resize_crop(same.permute(0, 3, 1, 2), cfg)):
            crops[i] = crop
    batch = torch.stack(crops).to(torch.float32).div_(255.0)
    mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)
