"""Batched CLIP preprocessing in torch — the same code on CPU and GPU tensors.

It mirrors open_clip's eval transform (``open_clip.transform.image_transform``) for the
model's own :class:`PreprocessConfig`: antialiased resize (bicubic or
bilinear) computed as Pillow computes it on uint8, centre crop (or centre pad for
``resize_mode="longest"``), then scaling to [0, 1] and per-channel normalisation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..runtime.torchvision_import import import_torchvision

import_torchvision()  # first: without TorchDynamo, which torchvision imports for nothing a CLIP model runs
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

__all__ = [
    "PreprocessConfig",
    "normalize",
    "preprocess_batch",
    "prereduce",
    "prereduce_factors",
    "resize_crop",
    "to_chw",
]


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
    crop_offset : str
        How the centre crop's offset is taken from the overhang: ``"round"`` (half to even, as
        torchvision and open_clip do) or ``"floor"`` (transformers' ``CLIPImageProcessor``).
        They differ by one pixel when the overhang is 3 mod 4.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    crop_offset: str = "round"

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
# Elements per band of :func:`prereduce` (float32: 16 MiB).
_PREREDUCE_BAND_ELEMENTS = 1 << 22


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

    Computed in bands of rows, so the float temporary stays small (about 16 MiB) whatever the
    image's size: a 9000 x 12000 image is never converted to float32 as a whole.

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
    kh, _ = factors
    lead = image.shape[:-3]
    flat = image.reshape(-1, *image.shape[-3:])
    rows_per_band = max(1, _PREREDUCE_BAND_ELEMENTS // max(1, flat.shape[0] * flat.shape[1] * flat.shape[3] * kh))
    bands = []
    for top in range(0, flat.shape[2], rows_per_band * kh):
        # contiguous first: a channels-last float band makes avg_pool2d allocate far more
        band = flat[:, :, top : top + rows_per_band * kh].contiguous().to(torch.float32)
        reduced = torch.nn.functional.avg_pool2d(
            band, kernel_size=factors, stride=factors, ceil_mode=True, count_include_pad=False
        )
        bands.append(reduced.round_().clamp_(0, 255).to(torch.uint8))
    out = torch.cat(bands, dim=2)
    return out.reshape(*lead, *out.shape[-3:])


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
    if cfg.crop_offset == "floor":
        top = (resized.shape[-2] - cfg.size[0]) // 2
        left = (resized.shape[-1] - cfg.size[1]) // 2
        return resized[..., top : top + cfg.size[0], left : left + cfg.size[1]]
    return F.center_crop(resized, list(cfg.size))


@functools.lru_cache(maxsize=16)
def _normalization(cfg: PreprocessConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` (1, 3, 1, 1) on ``device``: ``x * scale + shift`` is ``(x / 255 - mean) / std``.

    Built once per model configuration and device: creating a tensor on a GPU is a blocking
    copy that would wait for every other thread's work on the default stream.
    """
    mean = torch.tensor(cfg.mean, dtype=torch.float32)
    std = torch.tensor(cfg.std, dtype=torch.float32)
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(crops: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The model's input from resized crops.

    Parameters
    ----------
    crops
        uint8 (N, 3, size[0], size[1]), from :func:`resize_crop`, on any device.
    cfg
        The model's preprocessing.

    Returns
    -------
    torch.Tensor
        float32 (N, 3, size[0], size[1]) on ``crops``' device, scaled to [0, 1] and normalised
        with ``cfg.mean``/``cfg.std``.
    """
    scale, shift = _normalization(cfg, crops.device)
    return torch.addcmul(shift, crops.to(torch.float32), scale)


def to_chw(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) pixels as a (3, H, W) view (no copy; channels-last memory, which torch's
    uint8 antialiased CPU resize reads fastest)."""
    return pixels.permute(2, 0, 1)


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
    crops = [resize_crop(to_chw(img.to(device, non_blocking=True)), cfg) for img in images]
    return normalize(torch.stack(crops), cfg)
