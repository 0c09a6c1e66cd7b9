"""Model folders and head weights for tests: transformers CLIP folders, LAION head weights
(random, seeded), and the tiny open_clip models of :mod:`dask_clip.models.random_weights`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.random_weights import TINY_MODEL_CFG, TINY_TEXT_MODEL_CFG, write_model_dir

__all__ = [
    "TINY_MODEL_CFG",
    "TINY_TEXT_MODEL_CFG",
    "TRANSFORMERS_CONFIGS",
    "write_aesthetic_weights",
    "write_model_dir",
    "write_nsfw_weights",
    "write_transformers_model_dir",
]

# transformers CLIPConfig keyword arguments: a tiny one, and the shapes of OpenAI's published
# openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14 (random weights here).
_QUICK = {"hidden_act": "quick_gelu"}
TRANSFORMERS_CONFIGS: dict[str, dict] = {
    "tiny": {
        "projection_dim": 32,
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
    },
    "ViT-B-32": {
        "projection_dim": 512,
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            **_QUICK,
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            **_QUICK,
        },
    },
    "ViT-L-14": {
        "projection_dim": 768,
        "text_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            **_QUICK,
        },
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            **_QUICK,
        },
    },
}


def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-level BPE vocabulary and merges, from the file open_clip ships."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the rows CLIP's tokenizer uses
    base = list(bytes_to_unicode().values())
    tokens = [*base, *(b + "</w>" for b in base), *("".join(m.split()) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_transformers_model_dir(
    folder: str | Path, *, config: str | dict = "tiny", seed: int = 0, nemo_layout: bool = False
) -> Path:
    """Write a seeded random transformers ``CLIPModel`` folder, laid out as published on the hub.

    ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer as
    ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (CLIP's real BPE, from the copy
    open_clip ships), and ``preprocessor_config.json`` in the published form (``"size": 224``,
    ``"crop_size": 224``, ``"resample": 3``). No network.

    Parameters
    ----------
    folder
        Created if missing.
    config
        A key of :data:`TRANSFORMERS_CONFIGS` or ``CLIPConfig`` keyword arguments.
    seed
        Weight initialisation seed.
    nemo_layout
        Write NeMo Curator's ``model_dir`` layout: the model in
        ``folder/openai/clip-vit-large-patch14/``.

    Returns
    -------
    Path
        ``folder`` (the root, for ``nemo_layout``).
    """
    from transformers import CLIPConfig, CLIPModel

    root = Path(folder)
    target = root / "openai" / "clip-vit-large-patch14" if nemo_layout else root
    target.mkdir(parents=True, exist_ok=True)
    kwargs = TRANSFORMERS_CONFIGS[config] if isinstance(config, str) else config
    clip_config = CLIPConfig(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(clip_config)
    model.save_pretrained(str(target), safe_serialization=True)
    vocab, merges = _clip_bpe()
    (target / "vocab.json").write_text(json.dumps(vocab))
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer_config = {
        **special,
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (target / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}, indent=2))
    size = int(kwargs["vision_config"].get("image_size", 224))
    preprocessor = {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": size,
    }
    (target / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return root


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_aesthetic_weights(path: str | Path, *, dim: int = 768, seed: int = 0) -> Path:
    """Seeded random weights of LAION's aesthetic predictor, in the published layout.

    ``layers.{0,2,4,6,7}.{weight,bias}`` as a ``torch.save`` state dict (``.pth``) or a
    safetensors file (``.safetensors``, as NeMo Curator downloads it), chosen by the suffix.
    The scores they give are meaningless; tests, benchmarks and the offline notebook use them.
    """
    from ..heads.modules import AestheticMLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AestheticMLP(dim)
    return _save_state(module.state_dict(), Path(path))


def write_nsfw_weights(path: str | Path, *, dim: int = 768, seed: int = 0) -> Path:
    """Seeded random weights of LAION's NSFW detector in NeMo Curator's torch layout
    (``norm.mean``, ``norm.variance``, ``linear_{1..4}.{weight,bias}``), ``.pth`` or
    ``.safetensors`` by suffix. The normalisation statistics are drawn at the scale of unit
    D-dimensional embeddings (per-feature variance about 1/D)."""
    from ..heads.modules import NSFWDetector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = NSFWDetector(dim)
        state = module.state_dict()
        state["norm.mean"] = torch.randn(dim) / dim**0.5 / 4
        state["norm.variance"] = (0.5 + torch.rand(dim)) / dim
    return _save_state(state, Path(path))
