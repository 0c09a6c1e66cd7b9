"""A transformers CLIP folder's image processor config, read as dask_clip's preprocessing.

Its own module, light (no torch, no transformers): the family's detection
(:mod:`dask_clip.models.families.transformers`) checks it on the client, and the loader
(:mod:`dask_clip.models.hf`) builds the model's :class:`~dask_clip.image.preprocess.PreprocessConfig` from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import read_json

__all__ = ["SIGLIP_DEFAULTS", "ImageConfig", "transformers_image_config"]

_PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as transformers stores them

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)

_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageConfig:
    """A transformers CLIP image processor's eval preprocessing, in dask_clip's terms.

    Attributes
    ----------
    size : (int, int)
        The model's input (height, width).
    mean, std : tuple of float
        Per-channel normalisation of pixels scaled to [0, 1].
    interpolation : str
        ``"bicubic"`` or ``"bilinear"``.
    resize_mode : str
        ``"shortest"`` (shortest side to the crop size, then centre crop) or ``"squash"``
        (resized to ``size`` ignoring the aspect ratio).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str


def _size(value: Any, what: str) -> dict[str, int]:
    """transformers' size forms: an int, {"shortest_edge": n} or {"height": h, "width": w}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"shortest_edge": value}
    if isinstance(value, dict) and ("shortest_edge" in value or {"height", "width"} <= value.keys()):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise ValueError(f"{what}={value!r} is not a size transformers' CLIPImageProcessor takes")


#: The defaults of transformers' ``SiglipImageProcessor``: a square resize (no crop), bicubic,
#: mean and std 0.5 (``IMAGENET_STANDARD_MEAN``/``_STD``).
SIGLIP_DEFAULTS: dict[str, Any] = {
    "size": {"height": 224, "width": 224},
    "do_center_crop": False,
    "resample": 3,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}


def transformers_image_config(folder: str | Path, defaults: dict[str, Any] | None = None) -> ImageConfig:
    """Read a transformers CLIP folder's image processor config as dask_clip's preprocessing.

    Reads ``preprocessor_config.json`` (the published layout, e.g. ``"size": 224``) or the
    ``image_processor`` entry of transformers 5's ``processor_config.json``; keys it lacks take
    ``CLIPImageProcessor``'s defaults (shortest side 224, centre crop 224, bicubic, OpenAI's
    mean and std), or those of ``defaults`` (e.g. :data:`SIGLIP_DEFAULTS`).

    Raises
    ------
    FileNotFoundError
        Neither file exists.
    ValueError
        Preprocessing that dask_clip's resize and crop cannot reproduce (the message names the
        key): a crop smaller than the resize, no crop after a shortest-side resize, another
        resampling filter or rescale factor.
    """
    folder = Path(folder)
    found = [folder / name for name in _PREPROCESSOR_FILES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"{str(folder)!r} has no {' or '.join(_PREPROCESSOR_FILES)}: the image preprocessing of a "
            "transformers model comes from there (copy it with the weights)"
        )
    cfg = read_json(found[0])
    if found[0].name == "processor_config.json":
        cfg = cfg.get("image_processor", cfg)
    cfg = {**(defaults or {}), **cfg}
    where = str(found[0])
    if not cfg.get("do_resize", True):
        raise ValueError(f"{where}: do_resize=false; dask_clip resizes every image to the model's input")
    size = _size(cfg.get("size", 224), f"{where}: size")
    crop = _size(cfg.get("crop_size", 224), f"{where}: crop_size") if cfg.get("do_center_crop", True) else None
    if crop is not None and "shortest_edge" in crop:  # an int crop_size means a square
        crop = {"height": crop["shortest_edge"], "width": crop["shortest_edge"]}
    if "shortest_edge" in size:
        if crop is None:
            raise ValueError(f"{where}: a shortest-edge resize without a centre crop gives images of many sizes")
        if not (crop["height"] == crop["width"] == size["shortest_edge"]):
            raise ValueError(
                f"{where}: resize the shortest edge to {size['shortest_edge']}, then crop {crop['height']}x"
                f"{crop['width']}: dask_clip resizes the shortest side to a square crop's size (the CLIP recipe)"
            )
        out_size, mode = (crop["height"], crop["width"]), "shortest"
    else:
        out_size, mode = (size["height"], size["width"]), "squash"
        if crop is not None and (crop["height"], crop["width"]) != out_size:
            raise ValueError(f"{where}: a crop after a fixed-size resize is not supported")
    resample = cfg.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ValueError(f"{where}: resample={resample!r}; dask_clip reproduces 3 (bicubic) and 2 (bilinear)")
    if cfg.get("do_rescale", True) and not math.isclose(float(cfg.get("rescale_factor", 1 / 255)), 1 / 255):
        raise ValueError(f"{where}: rescale_factor={cfg['rescale_factor']}; only 1/255 is supported")
    if not cfg.get("do_rescale", True):
        raise ValueError(f"{where}: do_rescale=false; dask_clip scales pixels to [0, 1]")
    if cfg.get("do_normalize", True):
        mean = tuple(float(m) for m in cfg.get("image_mean", _CLIP_MEAN))
        std = tuple(float(s) for s in cfg.get("image_std", _CLIP_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{where}: image_mean/image_std need 3 values (RGB), got {mean} / {std}")
    return ImageConfig(out_size, mean, std, _RESAMPLE[resample], mode)
