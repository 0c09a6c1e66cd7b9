"""What a ``model_dir`` holds, read from its files on the client: open_clip's ``local-dir:``
layout, a Hugging Face transformers CLIP folder, or NeMo Curator's ``model_dir`` root.

Light: no torch, open_clip or transformers import. ``ModelSpec.validate`` calls
:func:`detect_model_dir` before any graph is built, and each worker calls it again (a few
``stat`` calls) to know how to load the folder.

==========================  =====================================================================
kind / layout               files
==========================  =====================================================================
``open_clip``               ``open_clip_config.json`` (with ``model_cfg``) + ``*.safetensors`` /
                            ``*.bin`` / ``*.pth``; what ``huggingface-cli download laion/...`` gives
``transformers``            ``config.json`` with ``"model_type": "clip"`` + ``model.safetensors``
                            (or shards, or ``pytorch_model.bin``) + ``preprocessor_config.json``
                            (or a transformers 5 ``processor_config.json``)
``transformers`` (NeMo)     NeMo Curator's root: the folder above ``openai/clip-vit-large-patch14/``,
                            which is read as the transformers folder
==========================  =====================================================================

When a folder holds both an open_clip and a transformers model (LAION's Hugging Face
repositories do), open_clip's files are used, as open_clip's own ``local-dir:`` loader does.

A folder is data, never code: every file in it must be a regular file (a FIFO as the weights
would block the loader forever, a device would never end), and a config that asks for the
folder's own Python code (``trust_remote_code`` anywhere, e.g. open_clip's
``text_cfg.tokenizer_kwargs``) is refused (:func:`check_no_remote_code`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"
#: Where NeMo Curator's ``ImageEmbeddingStage`` keeps its CLIP model under ``model_dir``.
NEMO_CLIP_SUBDIR = "openai/clip-vit-large-patch14"
# open_clip's `local-dir:` loader looks for these (open_clip.factory._find_checkpoint_in_dir).
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pth")
# transformers' own weight file names, in the order from_pretrained prefers them.
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as transformers stores them
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def find_weights(model_dir: Path) -> list[Path]:
    """Weight files in a ``local-dir:`` folder, safetensors first.

    Parameters
    ----------
    model_dir
        A folder in open_clip's ``local-dir:`` layout.

    Returns
    -------
    list of Path
        Candidate checkpoint files; empty when the folder holds no weights.
    """
    found = [p for pattern in WEIGHT_FILE_PATTERNS for p in sorted(model_dir.glob(pattern))]
    return sorted(found, key=lambda p: p.suffix != ".safetensors")


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


@dataclass(frozen=True)
class ModelDir:
    """A model folder as detected from its files.

    Attributes
    ----------
    kind : str
        :data:`OPEN_CLIP` or :data:`TRANSFORMERS`: which library loads it.
    folder : Path
        The folder holding the model's files (NeMo's root resolved to its CLIP subfolder).
    weights : tuple of Path
        The weight files, the preferred one first.
    layout : str
        How it was found: ``"open_clip local-dir"``, ``"transformers"`` or
        ``"NeMo Curator model_dir"``.
    """

    kind: str
    folder: Path
    weights: tuple[Path, ...]
    layout: str

    def embed_dim(self) -> int | None:
        """The width D of the image and text embeddings, from the config (None if unknown)."""
        if self.kind == OPEN_CLIP:
            cfg = _read_json(self.folder / "open_clip_config.json").get("model_cfg") or {}
            return int(cfg["embed_dim"]) if "embed_dim" in cfg else None
        # transformers' CLIPConfig default projection_dim is 512.
        return int(_read_json(self.folder / "config.json").get("projection_dim", 512))

    def describe(self) -> dict[str, Any]:
        """What ``dask-clip info --model-dir`` reports (JSON-able)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "layout": self.layout,
            "folder": str(self.folder),
            "weights": [p.name for p in self.weights],
            "embed_dim": self.embed_dim(),
        }
        if self.kind == TRANSFORMERS:
            image = transformers_image_config(self.folder)
            out["preprocess"] = {
                "size": list(image.size),
                "resize_mode": image.resize_mode,
                "interpolation": image.interpolation,
                "mean": list(image.mean),
                "std": list(image.std),
            }
            out["loads_with"] = "transformers CLIPModel.from_pretrained (pip install 'dask-clip[hf]')"
        else:
            cfg = _read_json(self.folder / "open_clip_config.json")
            out["preprocess"] = cfg.get("preprocess_cfg", {})
            out["loads_with"] = f"open_clip.create_model('local-dir:{self.folder}')"
        return out


def check_no_remote_code(config: object, where: str) -> None:
    """Refuse a model config that asks a loader to run Python code shipped with the model.

    open_clip passes ``text_cfg.tokenizer_kwargs`` to ``AutoTokenizer.from_pretrained``; with
    ``trust_remote_code`` there, transformers imports the ``auto_map`` modules of the folder (or
    hub repository). The key is looked for at any depth, so no loader's spelling is missed.

    Raises
    ------
    ValueError
        The config sets ``trust_remote_code`` to anything but false/null.
    """
    stack = [(config, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{path}.{key}" if path else str(key)
                if key == "trust_remote_code" and item not in (False, None):
                    raise ValueError(
                        f"{where} sets {here}={json.dumps(item)}: it asks to run Python code shipped with the model, "
                        "which dask_clip never does; remove the entry (the standard CLIP tokenizers need no code)"
                    )
                stack.append((item, here))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def check_regular_files(folder: Path) -> None:
    """Refuse a model folder holding anything a loader could open that is not a regular file.

    A FIFO as ``model.safetensors`` blocks the loader forever (the watchdog sees a live worker);
    a character device never ends. Subfolders are allowed (NeMo's layout, caches); symlinks are
    followed, as the loaders follow them; a broken symlink fails to open, so it passes here.

    Raises
    ------
    ValueError
        Names the first such entry and what it is.
    """
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            continue
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise ValueError(
            f"model_dir {str(folder)!r}: {entry.name} is {kind}; weights, configs and tokenizer files must be "
            "regular files (a loader would block or read forever)"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def detect_model_dir(path: str | Path) -> ModelDir:
    """Which kind of model a folder holds, with its weights, checked before anything loads.

    Parameters
    ----------
    path
        The ``model_dir`` as the user gave it (``~`` is expanded).

    Returns
    -------
    ModelDir

    Raises
    ------
    FileNotFoundError
        Not a folder; none of the three layouts; a layout without weights (never silently
        random) or without its preprocessing config.
    ValueError
        A config that is not a CLIP model's, preprocessing dask_clip cannot reproduce, a
        config that asks for remote code, or an entry that is not a regular file (a FIFO).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model_dir {str(folder)!r} is not a folder")
    check_regular_files(folder)
    if (folder / "open_clip_config.json").is_file():
        return _open_clip_dir(folder)
    if (folder / "config.json").is_file():
        return _transformers_dir(folder, "transformers")
    nemo = folder / NEMO_CLIP_SUBDIR
    if (nemo / "config.json").is_file():
        check_regular_files(nemo)
        return _transformers_dir(nemo, "NeMo Curator model_dir")
    raise FileNotFoundError(
        f"model_dir {str(folder)!r} holds no model dask_clip knows: expected open_clip's local-dir layout "
        "(open_clip_config.json + weights; `huggingface-cli download laion/CLIP-ViT-L-14-laion2B-s32B-b82K "
        "--local-dir DIR`), a transformers CLIP folder (config.json + model.safetensors + "
        f"preprocessor_config.json), or NeMo Curator's model_dir (with {NEMO_CLIP_SUBDIR}/ in it)"
    )


def _open_clip_dir(folder: Path) -> ModelDir:
    config = folder / "open_clip_config.json"
    parsed = _read_json(config)
    if "model_cfg" not in parsed:
        raise ValueError(f"{config} has no 'model_cfg' entry; it is not an open_clip config")
    check_no_remote_code(parsed, str(config))
    weights = find_weights(folder)
    if not weights:
        # open_clip itself would log a warning and go on with random weights.
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} holds no weights "
            f"({', '.join(WEIGHT_FILE_PATTERNS)}); refusing to use random weights"
        )
    return ModelDir(OPEN_CLIP, folder, tuple(weights), "open_clip local-dir")


def _transformers_dir(folder: Path, layout: str) -> ModelDir:
    config = _read_json(folder / "config.json")
    check_no_remote_code(config, str(folder / "config.json"))
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            check_no_remote_code(_read_json(folder / name), str(folder / name))
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
    cfg = _read_json(found[0])
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
