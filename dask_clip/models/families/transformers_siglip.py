"""The transformers SigLIP family: Hugging Face ``SiglipModel`` folders (``google/siglip-*``, and
SigLIP 2's fixed-resolution ``google/siglip2-*-patch16-224`` ... which are ``SiglipModel`` too).

The folder: ``config.json`` with ``"model_type": "siglip"`` + ``model.safetensors`` (or shards,
or ``pytorch_model.bin``) + ``preprocessor_config.json`` (``SiglipImageProcessor``: a square
resize without a centre crop, bicubic, mean and std 0.5) + the tokenizer (SigLIP's
sentencepiece ``spiece.model``, which needs the ``sentencepiece`` and ``protobuf`` packages: the
``siglip`` extra, or SigLIP 2's Gemma
``tokenizer.json``). Captions are padded to the fixed length the model was trained with
(``padding="max_length"``, 64 tokens), as ``SiglipProcessor`` is told to; zero-shot labels are
scored with the model's sigmoid (``logit_scale``, ``logit_bias``: :mod:`dask_clip.heads.zero_shot`).

SigLIP 2's NaFlex checkpoints (``"model_type": "siglip2"``, ``Siglip2Model``) keep each image's
aspect ratio within a budget of patches, so the model's input is not one fixed size: they are
refused with a message, as dask_clip's batches are of one size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._transformers_files import SIGLIP_DEFAULTS, transformers_image_config
from .base import SENTENCEPIECE_PACKAGES, ModelDir, ModelFamily, check_no_remote_code, missing_packages, read_json

if TYPE_CHECKING:
    import torch

    from ...embed.text import Tokenizer
    from ...image.preprocess import PreprocessConfig
    from ..loaded import LoadedModel
    from ..spec import ModelSpec

__all__ = ["FAMILY", "NAFLEX_MESSAGE", "TRANSFORMERS_SIGLIP"]

TRANSFORMERS_SIGLIP = "transformers_siglip"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# transformers' SiglipTextConfig default: the length SigLIP's captions are padded to.
_DEFAULT_CONTEXT = 64
NAFLEX_MESSAGE = (
    "holds a SigLIP 2 NaFlex model (model_type 'siglip2', Siglip2Model): it keeps each image's aspect "
    "ratio within a patch budget, which dask_clip's fixed-size batches do not reproduce; use a "
    "fixed-resolution SigLIP 2 checkpoint (e.g. google/siglip2-base-patch16-224, a SiglipModel) or "
    "open_clip's ViT-B-16-SigLIP2"
)


def detect(folder: Path) -> ModelDir | None:
    """``folder`` as a transformers SigLIP folder; None when its ``config.json`` is another model's.

    Raises
    ------
    ValueError
        A SigLIP 2 NaFlex folder (:data:`NAFLEX_MESSAGE`), or a config asking for remote code.
    FileNotFoundError
        No weights, or no image processor config.
    """
    if not (folder / "config.json").is_file():
        return None
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type == "siglip2":
        raise ValueError(f"model_dir {str(folder)!r} {NAFLEX_MESSAGE}")
    if model_type != "siglip":
        return None
    check_no_remote_code(config, str(folder / "config.json"))
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            check_no_remote_code(read_json(folder / name), str(folder / name))
    weights = [folder / name for name in _WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} holds no PyTorch weights ({', '.join(_WEIGHTS)}); "
            "refusing to use random weights"
        )
    transformers_image_config(folder, SIGLIP_DEFAULTS)  # readable and reproducible, or an error now
    return ModelDir(TRANSFORMERS_SIGLIP, folder, tuple(weights), "transformers SigLIP")


def dir_embed_dim(found: ModelDir) -> int:
    """The width D: SigLIP's image head outputs the vision tower's ``hidden_size`` (768 by default)."""
    vision = read_json(found.folder / "config.json").get("vision_config") or {}
    return int(vision.get("hidden_size", 768))


def _tokenizer_files(folder: Path) -> tuple[str, tuple[str, ...]]:
    """The folder's tokenizer in words, and the packages it needs beyond transformers."""
    if (folder / "tokenizer.json").is_file():
        return "tokenizer.json (tokenizers)", ()
    if (folder / "spiece.model").is_file():
        return "spiece.model (sentencepiece)", SENTENCEPIECE_PACKAGES
    return "none (no tokenizer.json or spiece.model: images only)", ()


def describe(found: ModelDir) -> dict[str, Any]:
    """The folder's preprocessing, tokenizer and loader, for ``dask-clip info --model-dir``."""
    image = transformers_image_config(found.folder, SIGLIP_DEFAULTS)
    tokenizer, needs = _tokenizer_files(found.folder)
    text = read_json(found.folder / "config.json").get("text_config") or {}
    return {
        "preprocess": {
            "size": list(image.size),
            "resize_mode": image.resize_mode,
            "interpolation": image.interpolation,
            "mean": list(image.mean),
            "std": list(image.std),
        },
        "tokenizer": tokenizer + (f", needs {' and '.join(needs)}" if needs else ""),
        "text_length": int(text.get("max_position_embeddings", _DEFAULT_CONTEXT)),
        "zero_shot": "sigmoid (logit_scale, logit_bias), each label on its own",
        "loads_with": "transformers SiglipModel.from_pretrained (pip install 'dask-clip[hf]')",
    }


def create(spec: ModelSpec, found: ModelDir | None) -> torch.nn.Module:
    """The folder's SigLIP model on the CPU, float32, behind open_clip's two methods."""
    from ...errors import ModelLoadError
    from ..hub import _unreadable, refuse_remote_code
    from ._siglip_model import load_transformers_siglip

    if found is None:
        raise ModelLoadError(f"{spec.describe()}: a transformers model is read from a model_dir")
    folder = found.folder.resolve()
    refuse_remote_code()
    try:
        return load_transformers_siglip(folder, transformers_image_config(folder, SIGLIP_DEFAULTS))
    except ModelLoadError:
        raise
    except Exception as err:  # a truncated model.safetensors, a config of another model
        raise _unreadable(f"model_dir {str(folder)!r}", err) from err


def model_embed_dim(model: Any) -> int | None:
    """The vision tower's ``hidden_size`` of the wrapped ``SiglipModel``."""
    dim = getattr(
        getattr(getattr(getattr(model, "clip", None), "config", None), "vision_config", None), "hidden_size", None
    )
    return int(dim) if isinstance(dim, int) else None


def preprocess(model: Any) -> PreprocessConfig:
    """The folder's image processor config, read when the model was loaded."""
    return model.preprocess_config


def tokenizer(model: LoadedModel) -> Tokenizer:
    """The folder's own tokenizer (``AutoTokenizer``, no remote code), padding every caption to the
    model's fixed length as ``SiglipProcessor(padding="max_length")`` does.

    Raises
    ------
    ImportError
        A sentencepiece tokenizer (``spiece.model``) without the ``sentencepiece`` or ``protobuf``
        package.
    FileNotFoundError
        The folder holds no tokenizer.
    """
    from transformers import AutoTokenizer

    from ...embed.text import Tokenizer

    spec = model.spec
    assert spec is not None
    folder = spec.resolve_model_dir().folder
    files, needs = _tokenizer_files(folder)
    if files.startswith("none"):
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} has no tokenizer (tokenizer.json or spiece.model): copy it with the "
            "weights to embed captions"
        )
    missing = missing_packages(needs)
    if missing:
        raise ImportError(
            f"the tokenizer of {str(folder)!r} is {files}, which needs {' and '.join(missing)}: "
            "pip install 'dask-clip[siglip]'"
        )
    loaded = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    context = int(model.model.clip.config.text_config.max_position_embeddings)
    names = set(loaded.model_input_names) & {"input_ids", "attention_mask"}

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        batch = loaded(texts, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
        return {k: v for k, v in batch.items() if k in names}

    vocab = int(model.model.clip.config.text_config.vocab_size)
    return Tokenizer(tokenize, f"transformers {type(loaded).__name__} of {folder}", vocab)


FAMILY = ModelFamily(
    name=TRANSFORMERS_SIGLIP,
    priority=9,  # before the transformers CLIP family, which refuses other model types
    layout_hint="a transformers SigLIP folder (config.json with model_type 'siglip' + model.safetensors)",
    detect=detect,
    dir_embed_dim=dir_embed_dim,
    describe=describe,
    create=create,
    model_embed_dim=model_embed_dim,
    preprocess=preprocess,
    tokenizer=tokenizer,
    needs=("transformers", "dask-clip[hf]"),
)
