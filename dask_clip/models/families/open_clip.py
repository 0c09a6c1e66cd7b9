"""The open_clip family: open_clip's architectures and pretrained tags, ``hf-hub:`` repositories,
checkpoint files, and folders in open_clip's ``local-dir:`` layout.

The folder (``open_clip_config.json`` with ``model_cfg`` + ``*.safetensors`` / ``*.bin`` /
``*.pth``) is what ``huggingface-cli download laion/...`` gives. Detection is light (no torch,
no open_clip import); loading builds the model on ``meta`` and assigns the weights where it can
(:mod:`dask_clip.models.skeleton`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelLoadError
from .base import OPEN_CLIP, WEIGHT_FILE_PATTERNS, ModelDir, ModelFamily, check_no_remote_code, find_weights, read_json

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


def describe(found: ModelDir) -> dict[str, Any]:
    """The folder's preprocessing and loader, for ``dask-clip info --model-dir``."""
    cfg = read_json(found.folder / "open_clip_config.json")
    return {
        "preprocess": cfg.get("preprocess_cfg", {}),
        "loads_with": f"open_clip.create_model('local-dir:{found.folder}')",
    }


def _local_dir_checkpoint(folder: Path) -> Path:
    """The weights file open_clip's ``local-dir:`` loader picks in ``folder``."""
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
    import open_clip

    from ..skeleton import create_assigned

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
    import open_clip

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
    import open_clip

    from ...embed.text import Tokenizer
    from ..hub import check_hub_config, refuse_remote_code

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
    tokenizer = open_clip.get_tokenizer(name, **({"trust_remote_code": False} if hf else {}))
    vocab = getattr(model.model, "vocab_size", None)
    return Tokenizer(lambda texts: {"text": tokenizer(texts)}, f"open_clip {name}", vocab)


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
