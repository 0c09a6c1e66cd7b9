"""The open_clip family: open_clip's architectures and pretrained tags, ``hf-hub:`` repositories,
checkpoint files, and folders in open_clip's ``local-dir:`` layout.

The folder (``open_clip_config.json`` with ``model_cfg`` + ``*.safetensors`` / ``*.bin`` /
``*.pth``) is what ``huggingface-cli download laion/...`` gives. Detection is light (no torch,
no open_clip import); loading builds the model on ``meta`` and assigns the weights where it can
(:mod:`dask_clip.models.skeleton`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelLoadError
from .base import (
    OPEN_CLIP,
    SENTENCEPIECE_PACKAGES,
    WEIGHT_FILE_PATTERNS,
    ModelDir,
    ModelFamily,
    check_no_remote_code,
    find_weights,
    missing_packages,
    read_json,
)

if TYPE_CHECKING:
    import torch

    from ...embed.text import Tokenizer
    from ...image.preprocess import PreprocessConfig
    from ..loaded import LoadedModel
    from ..spec import ModelSpec

__all__ = ["FAMILY", "RANDOM_WEIGHTS_SEED"]

RANDOM_WEIGHTS_SEED = 0


def detect(folder: Path) -> ModelDir | None:
    """``folder`` as an open_clip ``local-dir:`` model, or None when it holds no ``open_clip_config.json``."""
    if not (folder / "open_clip_config.json").is_file():
        return None
    return _open_clip_dir(folder)


def _open_clip_dir(folder: Path) -> ModelDir:
    config = folder / "open_clip_config.json"
    parsed = read_json(config)
    if "model_cfg" not in parsed:
        raise ValueError(f"{config} has no 'model_cfg' entry; it is not an open_clip config")
    check_no_remote_code(parsed, str(config))
    vision = parsed["model_cfg"].get("vision_cfg") if isinstance(parsed["model_cfg"], dict) else None
    timm_name = str(vision.get("timm_model_name") or "") if isinstance(vision, dict) else ""
    if timm_name.startswith("naflex"):
        raise ValueError(
            f"{config}: the image tower {timm_name!r} is a NaFlex ViT (each image's aspect ratio kept within a "
            "patch budget), which dask_clip's fixed-size batches do not reproduce; use a fixed-resolution "
            "checkpoint (e.g. ViT-B-16-SigLIP2)"
        )
    weights = find_weights(folder)
    if not weights:
        # open_clip itself would log a warning and go on with random weights.
        raise FileNotFoundError(
            f"model_dir {str(folder)!r} holds no weights "
            f"({', '.join(WEIGHT_FILE_PATTERNS)}); refusing to use random weights"
        )
    return ModelDir(OPEN_CLIP, folder, tuple(weights), "open_clip local-dir")


def dir_embed_dim(found: ModelDir) -> int | None:
    """The width D the folder's config declares (``model_cfg.embed_dim``), None where it does not."""
    cfg = read_json(found.folder / "open_clip_config.json").get("model_cfg") or {}
    return int(cfg["embed_dim"]) if "embed_dim" in cfg else None


# The families open_clip loads, told apart by their config (the first that matches names it):
# SigLIP by its sigmoid loss's learnt bias, the others by their timm image tower.
_FAMILY_RULES: tuple[tuple[str, Callable[[dict[str, Any], str], bool]], ...] = (
    ("SigLIP", lambda cfg, timm: cfg.get("init_logit_bias") is not None),
    ("EVA-02", lambda cfg, timm: "eva02" in timm),
    ("MobileCLIP", lambda cfg, timm: "fastvit_mci" in timm or "mobileclip" in timm),
    ("CLIP, timm image tower", lambda cfg, timm: bool(timm)),
    ("CLIP", lambda cfg, timm: True),
)


TOKENIZER_FILES = "tokenizer.json, spiece.model, tokenizer.model or vocab.json + merges.txt"


def _tokenizer_files(folder: Path) -> tuple[str, set[str]]:
    """An ``hf_tokenizer_name`` folder's tokenizer files in words, and the packages they need."""
    if (folder / "tokenizer.json").is_file():
        return "Hugging Face tokenizer.json in the folder", {"transformers"}
    for name in ("spiece.model", "tokenizer.model"):  # T5's / Gemma's sentencepiece file
        if (folder / name).is_file():
            return f"sentencepiece {name} in the folder", {"transformers", *SENTENCEPIECE_PACKAGES}
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():  # a BPE (CLIPTokenizer)
        return "Hugging Face vocab.json + merges.txt in the folder", {"transformers"}
    return f"missing: the config names a Hugging Face tokenizer, the folder has no {TOKENIZER_FILES}", {"transformers"}


def describe(found: ModelDir) -> dict[str, Any]:
    """The folder's preprocessing, towers, tokenizer, zero-shot scoring and loader, for
    ``dask-clip info --model-dir``."""
    from ..open_clip_import import folder_needs

    cfg = read_json(found.folder / "open_clip_config.json")
    model_cfg = cfg.get("model_cfg") or {}
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    timm_name = str(vision.get("timm_model_name") or "")
    family = next(label for label, rule in _FAMILY_RULES if rule(model_cfg, timm_name))
    needs = folder_needs(found.folder)
    if text.get("hf_tokenizer_name"):
        tokenizer, more = _tokenizer_files(found.folder)
        needs |= more
    else:
        tokenizer = "open_clip's CLIP BPE (SimpleTokenizer)"
    return {
        "family": family,
        "image_tower": f"timm {timm_name}" if timm_name else "open_clip",
        "preprocess": cfg.get("preprocess_cfg", {}),
        "tokenizer": tokenizer,
        "text_length": int(text.get("context_length", 77)),
        "zero_shot": (
            "sigmoid (logit_scale, logit_bias), each label on its own"
            if model_cfg.get("init_logit_bias") is not None
            else "softmax over the labels (logit_scale)"
        ),
        "needs": sorted(needs),
        "loads_with": f"open_clip.create_model('local-dir:{found.folder}')",
    }


def _check_packages(folder: Path, needs: set[str]) -> None:
    """One line naming the package a folder's model needs and lacks (open_clip itself fails later,
    with an assertion deep in its tower builders)."""
    cfg = read_json(folder / "open_clip_config.json").get("model_cfg") or {}
    why = {
        "timm": f"its image tower is timm's {(cfg.get('vision_cfg') or {}).get('timm_model_name')!r}",
        "transformers": f"its text tower is Hugging Face's {(cfg.get('text_cfg') or {}).get('hf_model_name')!r}",
    }
    for package in missing_packages(needs):
        raise ModelLoadError(
            f"model_dir {str(folder)!r} needs {package}: {why.get(package, 'its model uses it')}; pip install {package}"
        )


def _local_dir_checkpoint(folder: Path) -> Path:
    """The weights file open_clip's ``local-dir:`` loader picks in ``folder``."""
    from ..open_clip_import import open_clip_module

    open_clip_module()
    import open_clip.factory

    # open_clip's own choice where it has one, so that the same file loads as with create_model
    pick = getattr(open_clip.factory, "_find_checkpoint_in_dir", None)
    found = pick(folder) if pick is not None else next(iter(find_weights(folder)), None)
    if found is None:
        raise ModelLoadError(f"model_dir {str(folder)!r} holds no weights")
    return Path(found)


def _create_with_weights(name: str, checkpoint: Path, **create_kwargs: Any) -> torch.nn.Module:
    """open_clip model ``name`` with ``checkpoint``'s weights: built on ``meta`` and the weights
    assigned (:mod:`dask_clip.models.skeleton`), or built in full where that cannot fill every tensor."""
    from ..open_clip_import import open_clip_module
    from ..skeleton import create_assigned

    open_clip = open_clip_module()

    model = create_assigned(name, checkpoint, **create_kwargs)
    if model is not None:
        return model
    if name.startswith("local-dir:"):
        return open_clip.create_model(name, weights_only=True, **create_kwargs)
    return open_clip.create_model(name, pretrained=str(checkpoint), weights_only=True, **create_kwargs)


def create(spec: ModelSpec, found: ModelDir | None) -> torch.nn.Module:
    """The model of ``spec`` on the CPU, float32, with both towers.

    Raises
    ------
    ModelLoadError
        The weights could not be found, read or downloaded (the message says what to do).
    """
    import torch

    from ...runtime.node_lock import node_lock
    from ..hub import _cache_dir, _check_hub_reachable, _unreadable, check_hub_config, refuse_remote_code
    from ..open_clip_import import folder_needs, import_open_clip

    if found is not None:
        folder = found.folder.resolve()
        if not find_weights(folder):  # open_clip would silently go on with random weights
            raise ModelLoadError(f"model_dir {str(folder)!r} holds no weights")
        needs = folder_needs(folder)
        _check_packages(folder, needs)
        import_open_clip(needs)  # transformers and timm only for towers made of them
        if "transformers" in needs:  # an hf_model_name text tower: open_clip calls transformers itself
            refuse_remote_code()
        try:
            return _create_with_weights(f"local-dir:{folder}", _local_dir_checkpoint(folder))
        except Exception as err:  # SafetensorError, a state-dict size mismatch, an unpickling error
            raise _unreadable(f"model_dir {str(folder)!r}", err) from err
    open_clip = import_open_clip()
    refuse_remote_code()  # any architecture may follow, an hf_model_name text tower among them
    if spec.hub_id is not None:
        _check_hub_reachable(spec.hub_id, repr(spec.model))
        check_hub_config(spec.hub_id)
        try:
            return open_clip.create_model(spec.model, weights_only=True, cache_dir=_cache_dir())
        except Exception as err:  # open_clip and huggingface_hub raise many kinds for a failed download
            raise ModelLoadError(
                f"could not load {spec.model!r}: {err}. Without network access, fetch the folder on a "
                f"machine that has it (`huggingface-cli download {spec.hub_id} --local-dir DIR`), copy DIR "
                "here and pass model_dir=DIR (CLI: --model-dir DIR)."
            ) from err
    if spec.pretrained is None:
        # Seeded, so every worker process builds the same random model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return open_clip.create_model(spec.model, pretrained=None)
    checkpoint = Path(spec.pretrained).expanduser()
    if checkpoint.is_file():  # a file: nothing to download, so no hub hint on failure
        try:
            return _create_with_weights(spec.model, checkpoint)
        except Exception as err:
            raise _unreadable(f"checkpoint {spec.pretrained!r} for {spec.model!r}", err) from err
    from open_clip.pretrained import download_pretrained

    tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if tag_cfg.get("hf_hub"):
        _check_hub_reachable(tag_cfg["hf_hub"].strip("/"), f"pretrained={spec.pretrained!r} for {spec.model!r}")
    try:
        # One process per node downloads, the others wait and find the file in the cache:
        # open_clip writes URL downloads straight to their final path (runtime/node_lock.py).
        with node_lock(f"{spec.model}/{spec.pretrained}", _cache_dir()):
            download_pretrained(tag_cfg, cache_dir=_cache_dir())
        # OpenAI's weights were trained with QuickGELU; open_clip only warns on a mismatch.
        model = open_clip.create_model(
            spec.model,
            pretrained=spec.pretrained,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            weights_only=True,
            cache_dir=_cache_dir(),
        )
    except Exception as err:  # open_clip raises RuntimeError for any download failure
        repo = (tag_cfg.get("hf_hub") or "laion/CLIP-ViT-L-14-laion2B-s32B-b82K").rstrip("/")
        raise ModelLoadError(
            f"could not load pretrained={spec.pretrained!r} for {spec.model!r}: {err}. "
            "Without network access, fetch the weights on a machine that has it "
            f"(`huggingface-cli download {repo} --local-dir DIR`), copy DIR here and pass "
            "model_dir=DIR (CLI: --model-dir DIR)."
        ) from err
    return model


def model_embed_dim(model: Any) -> int | None:
    """The width D the loaded model declares (``visual.output_dim``), None where it does not."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    return int(dim) if isinstance(dim, int) else None


def preprocess(model: Any) -> PreprocessConfig:
    """The model's own eval preprocessing (open_clip's ``preprocess_cfg``)."""
    from ...image.preprocess import PreprocessConfig

    return PreprocessConfig.from_model(model)


def _text_cfg(spec: ModelSpec, folder: Path | None) -> dict[str, Any] | None:
    """The ``text_cfg`` open_clip's ``get_tokenizer`` will read; None when it has no config (an
    ``hf-hub:`` repository without one, where open_clip falls back to the repository's tokenizer)."""
    from ..open_clip_import import open_clip_module

    open_clip = open_clip_module()
    if folder is not None:
        config = json.loads((folder / "open_clip_config.json").read_text())
    elif spec.hub_id is not None:
        from huggingface_hub import hf_hub_download

        try:
            config = json.loads(Path(hf_hub_download(spec.hub_id, "open_clip_config.json")).read_text())
        except Exception:
            return None
    else:
        config = {"model_cfg": open_clip.get_model_config(spec.model) or {}}
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    return (model_cfg.get("text_cfg") or {}) if isinstance(model_cfg, dict) else None


def tokenizer(model: LoadedModel) -> Tokenizer:
    """open_clip's tokenizer of the model (an ``HFTokenizer`` where the config names one; no remote code)."""
    from ...embed.text import Tokenizer
    from ..hub import check_hub_config, refuse_remote_code
    from ..open_clip_import import open_clip_module

    open_clip = open_clip_module()

    spec = model.spec
    assert spec is not None
    refuse_remote_code()
    folder = None
    if spec.model_dir is not None:
        # Detected again: the config is checked (no remote code, regular files) as open_clip reads it now.
        folder = spec.resolve_model_dir().folder.resolve()
        name = f"local-dir:{folder}"
    else:
        name = spec.model  # an architecture, or hf-hub:ORG/NAME (its config is in the hub cache by now)
        if spec.hub_id is not None:
            check_hub_config(spec.hub_id)
    text_cfg = _text_cfg(spec, folder)
    # open_clip makes an HFTokenizer (transformers' AutoTokenizer) when the config names one, or
    # for a hub repository without a config. A caller's keyword wins over the config's
    # tokenizer_kwargs (open_clip merges them so): whatever a config says, no code runs.
    hf = text_cfg is None or bool(text_cfg.get("hf_tokenizer_name"))
    if hf and folder is not None:  # a local-dir: folder's HFTokenizer reads the folder's own files
        _check_tokenizer_files(folder)
    tokenizer = open_clip.get_tokenizer(name, **({"trust_remote_code": False} if hf else {}))
    vocab = getattr(model.model, "vocab_size", None)
    return Tokenizer(lambda texts: {"text": tokenizer(texts)}, f"open_clip {name}", vocab)


def _check_tokenizer_files(folder: Path) -> None:
    """A one-line error when a folder's Hugging Face tokenizer (SigLIP's) is missing or needs a
    package that is not installed, instead of transformers' long one (or a download attempt)."""
    files, needs = _tokenizer_files(folder)
    if files.startswith("missing"):
        raise FileNotFoundError(
            f"model_dir {str(folder)!r}: its config names a Hugging Face tokenizer, but the folder has no "
            f"{TOKENIZER_FILES} (copy the tokenizer files with the weights)"
        )
    missing = missing_packages(needs)
    if missing:
        extra = "dask-clip[siglip]" if set(missing) & set(SENTENCEPIECE_PACKAGES) else "dask-clip[hf]"
        raise ImportError(
            f"the tokenizer of {str(folder)!r} ({files}) needs {' and '.join(missing)}: pip install '{extra}'"
        )


FAMILY = ModelFamily(
    name=OPEN_CLIP,
    priority=0,  # first: a folder with both open_clip's and transformers' files loads as open_clip does
    layout_hint=(
        "open_clip's local-dir layout (open_clip_config.json + weights; `huggingface-cli download "
        "laion/CLIP-ViT-L-14-laion2B-s32B-b82K --local-dir DIR`)"
    ),
    detect=detect,
    dir_embed_dim=dir_embed_dim,
    describe=describe,
    create=create,
    model_embed_dim=model_embed_dim,
    preprocess=preprocess,
    tokenizer=tokenizer,
)
