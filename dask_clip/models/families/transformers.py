"""The transformers family: Hugging Face transformers CLIP folders (``CLIPModel``), and NeMo
Curator's ``model_dir`` root that holds one under ``openai/clip-vit-large-patch14/``.

The folder: ``config.json`` with ``"model_type": "clip"`` + ``model.safetensors`` (or shards,
or ``pytorch_model.bin``) + ``preprocessor_config.json`` (or a transformers 5
``processor_config.json``). Loading needs the ``hf`` extra (:mod:`dask_clip.hf`); detection and
the image config need nothing but the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import TRANSFORMERS, ModelDir, ModelFamily, check_no_remote_code, check_regular_files, read_json

if TYPE_CHECKING:
    import torch

    from ...preprocess import PreprocessConfig
    from ...spec import ModelSpec
    from ...text import Tokenizer
    from ..loaded import LoadedModel

__all__ = ["FAMILY", "NEMO_CLIP_SUBDIR", "ImageConfig", "transformers_image_config"]

#: Where NeMo Curator's ``ImageEmbeddingStage`` keeps its CLIP model under ``model_dir``.
NEMO_CLIP_SUBDIR = "openai/clip-vit-large-patch14"
# transformers' own weight file names, in the order from_pretrained prefers them.
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

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


def detect(folder: Path) -> ModelDir | None:
    """``folder`` as a transformers CLIP folder, or NeMo Curator's root of one; None when neither."""
    if (folder / "config.json").is_file():
        return _transformers_dir(folder, "transformers")
    nemo = folder / NEMO_CLIP_SUBDIR
    if (nemo / "config.json").is_file():
        check_regular_files(nemo)
        return _transformers_dir(nemo, "NeMo Curator model_dir")
    return None


def _transformers_dir(folder: Path, layout: str) -> ModelDir:
    config = read_json(folder / "config.json")
    check_no_remote_code(config, str(folder / "config.json"))
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            check_no_remote_code(read_json(folder / name), str(folder / name))
    model_type = config.get("model_type")
    if model_type != "clip":
        raise ValueError(
            f"{folder / 'config.json'} says model_type {model_type!r}; dask_clip reads transformers CLIP "
            "models (model_type 'clip', e.g. openai/clip-vit-large-patch14) or open_clip folders"
        )
    weights = [folder / name for name in _TRANSFORMERS_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} holds no PyTorch weights ({', '.join(_TRANSFORMERS_WEIGHTS)}); "
            "refusing to use random weights"
        )
    transformers_image_config(folder)  # readable and reproducible, or an error now
    return ModelDir(TRANSFORMERS, folder, tuple(weights), layout)


def _size(value: Any, what: str) -> dict[str, int]:
    """transformers' size forms: an int, {"shortest_edge": n} or {"height": h, "width": w}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"shortest_edge": value}
    if isinstance(value, dict) and ("shortest_edge" in value or {"height", "width"} <= value.keys()):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise ValueError(f"{what}={value!r} is not a size transformers' CLIPImageProcessor takes")


def transformers_image_config(folder: str | Path) -> ImageConfig:
    """Read a transformers CLIP folder's image processor config as dask_clip's preprocessing.

    Reads ``preprocessor_config.json`` (the published layout, e.g. ``"size": 224``) or the
    ``image_processor`` entry of transformers 5's ``processor_config.json``; keys it lacks take
    ``CLIPImageProcessor``'s defaults (shortest side 224, centre crop 224, bicubic, OpenAI's
    mean and std).

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


def dir_embed_dim(found: ModelDir) -> int:
    """The width D of ``config.json`` (transformers' ``CLIPConfig`` default ``projection_dim`` is 512)."""
    return int(read_json(found.folder / "config.json").get("projection_dim", 512))


def describe(found: ModelDir) -> dict[str, Any]:
    """The folder's preprocessing and loader, for ``dask-clip info --model-dir``."""
    image = transformers_image_config(found.folder)
    return {
        "preprocess": {
            "size": list(image.size),
            "resize_mode": image.resize_mode,
            "interpolation": image.interpolation,
            "mean": list(image.mean),
            "std": list(image.std),
        },
        "loads_with": "transformers CLIPModel.from_pretrained (pip install 'dask-clip[hf]')",
    }


def create(spec: ModelSpec, found: ModelDir | None) -> torch.nn.Module:
    """The folder's CLIP model on the CPU, float32, behind open_clip's two methods
    (:class:`~dask_clip.hf.TransformersCLIP`)."""
    from ...errors import ModelLoadError
    from ...hf import load_transformers_clip
    from ..hub import _unreadable, refuse_remote_code

    if found is None:
        raise ModelLoadError(f"{spec.describe()}: a transformers model is read from a model_dir")
    folder = found.folder.resolve()
    refuse_remote_code()
    try:
        return load_transformers_clip(folder)
    except ModelLoadError:
        raise
    except Exception as err:  # a truncated model.safetensors, a config of another model
        raise _unreadable(f"model_dir {str(folder)!r}", err) from err


def model_embed_dim(model: Any) -> int | None:
    """``projection_dim`` of the wrapped ``CLIPModel``'s config."""
    dim = getattr(getattr(getattr(model, "clip", None), "config", None), "projection_dim", None)
    return int(dim) if isinstance(dim, int) else None


def preprocess(model: Any) -> PreprocessConfig:
    """The folder's image processor config, read when the model was loaded."""
    return model.preprocess_config


def tokenizer(model: LoadedModel) -> Tokenizer:
    """The folder's own tokenizer (``AutoTokenizer``, never remote code), bounded by the position table."""
    from transformers import AutoTokenizer

    from ...text import Tokenizer

    spec = model.spec
    assert spec is not None
    folder = spec.resolve_model_dir().folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"the tokenizer of {str(folder)!r} needs Python code shipped with the model (auto_map), which "
            "dask_clip never runs; use a folder with a standard CLIP tokenizer (vocab.json + merges.txt)"
        ) from None
    # The position table's length bounds a caption; a folder's tokenizer config may not say it.
    context = int(model.model.clip.config.text_config.max_position_embeddings)
    max_length = min(int(tokenizer.model_max_length or context), context)

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    vocab = int(model.model.clip.config.text_config.vocab_size)
    return Tokenizer(tokenize, f"transformers {type(tokenizer).__name__} of {folder}", vocab)


FAMILY = ModelFamily(
    name=TRANSFORMERS,
    priority=10,
    layout_hint=(
        "a transformers CLIP folder (config.json + model.safetensors + preprocessor_config.json), "
        f"or NeMo Curator's model_dir (with {NEMO_CLIP_SUBDIR}/ in it)"
    ),
    detect=detect,
    dir_embed_dim=dir_embed_dim,
    describe=describe,
    create=create,
    model_embed_dim=model_embed_dim,
    preprocess=preprocess,
    tokenizer=tokenizer,
    needs=("transformers", "dask-clip[hf]"),
)
