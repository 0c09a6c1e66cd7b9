"""The transformers family: Hugging Face transformers CLIP folders (``CLIPModel``), and NeMo
Curator's ``model_dir`` root that holds one under ``openai/clip-vit-large-patch14/``.

The folder: ``config.json`` with ``"model_type": "clip"`` + ``model.safetensors`` (or shards,
or ``pytorch_model.bin``) + ``preprocessor_config.json`` (or a transformers 5
``processor_config.json``). Loading needs the ``hf`` extra (:mod:`dask_clip.models.hf`); detection and
the image config need nothing but the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._transformers_files import ImageConfig, transformers_image_config
from .base import TRANSFORMERS, ModelDir, ModelFamily, check_no_remote_code, check_regular_files, read_json

if TYPE_CHECKING:
    import torch

    from ...embed.text import Tokenizer
    from ...image.preprocess import PreprocessConfig
    from ..loaded import LoadedModel
    from ..spec import ModelSpec

__all__ = ["FAMILY", "NEMO_CLIP_SUBDIR", "ImageConfig", "transformers_image_config"]

#: Where NeMo Curator's ``ImageEmbeddingStage`` keeps its CLIP model under ``model_dir``.
NEMO_CLIP_SUBDIR = "openai/clip-vit-large-patch14"
# transformers' own weight file names, in the order from_pretrained prefers them.
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


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
            "models (model_type 'clip', e.g. openai/clip-vit-large-patch14), SigLIP ones (model_type 'siglip') "
            "or open_clip folders"
        )
    weights = [folder / name for name in _TRANSFORMERS_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} holds no PyTorch weights ({', '.join(_TRANSFORMERS_WEIGHTS)}); "
            "refusing to use random weights"
        )
    transformers_image_config(folder)  # readable and reproducible, or an error now
    return ModelDir(TRANSFORMERS, folder, tuple(weights), layout)


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
    (:class:`~dask_clip.models.hf.TransformersCLIP`)."""
    from ...errors import ModelLoadError
    from ..hf import load_transformers_clip
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

    from ...embed.text import Tokenizer

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
