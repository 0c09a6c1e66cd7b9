"""ModelSpec: what model to load, and how — the only model object that travels to workers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..validation import PRECISIONS, check_choice, check_device
from .families import detect_model_dir, get_family
from .families.base import WEIGHT_FILE_PATTERNS, ModelDir, find_weights

__all__ = ["HF_HUB_PREFIX", "WEIGHT_FILE_PATTERNS", "ModelSpec", "find_weights"]

#: open_clip's prefix for models read from the Hugging Face hub: ``"hf-hub:org/name"``.
HF_HUB_PREFIX = "hf-hub:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """A small, hashable, picklable description of a CLIP model (both towers).

    Workers key their model cache by this value, so two equal specs share one loaded model.

    Parameters
    ----------
    model
        open_clip architecture name, e.g. ``"ViT-L-14"`` (see ``open_clip.list_models()``), or
        an open_clip hub id, ``"hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K"`` (downloaded by
        open_clip; ``pretrained`` is then not used). Ignored when ``model_dir`` is given: the
        folder decides.
    pretrained
        open_clip pretrained tag (``"openai"``, ``"laion2b_s32b_b82k"``, ...), a path to a
        checkpoint file, or ``None`` for seeded random weights (explicit request only).
    model_dir
        A local folder, its kind detected from its files (:mod:`dask_clip.models.model_dirs`): open_clip's
        ``local-dir:`` layout (``open_clip_config.json`` plus weights), a transformers CLIP folder
        (``config.json`` with ``model_type: clip`` + ``model.safetensors``, loaded with the ``hf``
        extra), or NeMo Curator's ``model_dir`` (with ``openai/clip-vit-large-patch14/`` in it).
    precision
        ``"auto"`` (fp32 on CPU; on GPUs fp16 weights, rows whose fp16 embedding overflows
        recomputed under bf16 autocast), ``"fp32"``, ``"fp16"`` or ``"bf16"`` (fp32 weights
        under autocast), ``"pure_fp16"`` or ``"pure_bf16"`` (weights held in that dtype).
        Embeddings are float32 whatever the precision.
    device
        ``"auto"`` (the worker's ``cuda:0`` when CUDA is available, else CPU), ``"cpu"``,
        ``"cuda"``.
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    model_dir: str | None = None
    precision: str = "auto"
    device: str = "auto"

    def validate(self) -> None:
        """Check the spec on the client, before any graph is built.

        Raises
        ------
        ValueError
            Unknown architecture, pretrained tag, precision or device (the message lists the
            valid choices), a malformed ``hf-hub:`` id, or a ``model_dir`` config that is not a
            CLIP model's.
        FileNotFoundError
            ``model_dir`` does not exist, matches no known layout, or holds no weights.
        ImportError
            A transformers folder without transformers installed (the message says how).
        """
        check_choice("precision", self.precision, PRECISIONS)
        check_device(self.device)
        if self.model_dir is not None:
            found = self.resolve_model_dir()
            needs = get_family(found.kind).needs
            if needs is not None:
                require_package(*needs, what=f"{found.kind} CLIP")
            return
        if self.hub_id is not None:
            if not _HUB_ID.match(self.hub_id):
                raise ValueError(f"model={self.model!r}: expected {HF_HUB_PREFIX}ORG/NAME, a Hugging Face repository")
            if self.pretrained is None:
                raise ValueError(
                    f"model={self.model!r} names weights on the hub; pretrained=None (random weights) needs an "
                    "architecture name such as 'ViT-B-32'"
                )
            return
        from .open_clip_import import open_clip_module

        open_clip = open_clip_module()  # lazily: importing open_clip pulls in timm and friends

        if self.model not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if self.model.lower()[:5] in m.lower()]
            raise ValueError(
                f"unknown open_clip architecture {self.model!r}; close matches: {close[:12]} "
                f"(all: open_clip.list_models(); or {HF_HUB_PREFIX}ORG/NAME for a hub repository)"
            )
        if self.pretrained is None or Path(self.pretrained).is_file():
            return
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        if self.pretrained not in tags:
            raise ValueError(
                f"pretrained={self.pretrained!r} is neither a checkpoint file nor a tag of "
                f"{self.model!r}; its tags: {tags}; or pass model_dir=, or pretrained=None "
                "for random weights"
            )

    def resolve_model_dir(self) -> ModelDir:
        """The detected kind and files of ``model_dir`` (:func:`~dask_clip.models.model_dirs.detect_model_dir`)."""
        if self.model_dir is None:
            raise ValueError("this spec has no model_dir")
        return detect_model_dir(self.model_dir)

    @property
    def hub_id(self) -> str | None:
        """``"org/name"`` for an ``hf-hub:`` model (without ``model_dir``), else None."""
        if self.model_dir is None and self.model.startswith(HF_HUB_PREFIX):
            return self.model[len(HF_HUB_PREFIX) :]
        return None

    @property
    def random_weights(self) -> bool:
        """True when the user asked for seeded random weights."""
        return self.model_dir is None and self.pretrained is None and self.hub_id is None

    def describe(self) -> str:
        """A short name for messages: the architecture, or the model folder."""
        return f"model_dir {self.model_dir!r}" if self.model_dir is not None else f"model {self.model!r}"

    def model_config(self) -> dict | None:
        """open_clip's ``model_cfg`` of this spec, read without building the model (None if unknown,
        or for a transformers folder)."""
        if self.model_dir is not None:
            config = Path(self.model_dir).expanduser() / "open_clip_config.json"
            try:
                return json.loads(config.read_text()).get("model_cfg")
            except (OSError, ValueError):
                return None
        if self.hub_id is not None:
            return _cached_hub_config(self.hub_id)
        from .open_clip_import import open_clip_module

        return open_clip_module().get_model_config(self.model)

    def embed_dim(self) -> int | None:
        """Width D of the embeddings, from the model's config (None if it cannot be known here:
        an ``hf-hub:`` model not in the local hub cache)."""
        if self.model_dir is not None:
            try:
                return self.resolve_model_dir().embed_dim()
            except (OSError, ValueError):
                return None
        cfg = self.model_config()
        return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def _cached_hub_config(hub_id: str) -> dict | None:
    """The ``model_cfg`` of a hub model when its config is already in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(hub_id, "open_clip_config.json")
        if not isinstance(path, str):
            return None
        return json.loads(Path(path).read_text()).get("model_cfg")
    except (ImportError, OSError, ValueError):
        return None


def require_package(module: str, install: str, *, what: str) -> None:
    """ImportError, saying how to install it, when a model family's package is missing.

    Parameters
    ----------
    module
        The module to import (``"transformers"``).
    install
        What to pip install (``"dask-clip[hf]"``).
    what
        The model, for the message (``"transformers CLIP"``).
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this model_dir holds a {what} model, which needs {module} ({err}): pip install '{install}'"
        ) from err


def require_transformers() -> None:
    """ImportError, saying how to install it, when transformers is missing."""
    require_package("transformers", "dask-clip[hf]", what="transformers CLIP")
