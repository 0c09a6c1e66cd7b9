"""Tiny, seeded, randomly initialised models of the non-CLIP families, in their published layouts.

open_clip ``local-dir:`` folders of SigLIP (a timm ViT with attention pooling, a bidirectional text
tower pooled at the last token, ``init_logit_bias``, a Hugging Face tokenizer in the folder),
EVA-02 (a timm EVA-02 image tower) and MobileCLIP (a timm FastViT-MCi image tower), and
transformers ``SiglipModel`` folders with SigLIP's sentencepiece tokenizer (``spiece.model``) or
SigLIP 2's Gemma tokenizer (``tokenizer.json``). Each mirrors its family's real folder (the
same files, the same preprocessing keys) with small towers; the tokenizers are trained here on a
few sentences, so nothing is downloaded. Used by the tests and the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FULL_SIZE",
    "OPEN_CLIP_FAMILY_CFGS",
    "TOKENIZER_SENTENCES",
    "TRANSFORMERS_SIGLIP_CONFIGS",
    "write_open_clip_architecture_dir",
    "write_open_clip_family_dir",
    "write_transformers_siglip_dir",
]

#: What the tiny tokenizers are trained on (and the captions tests use).
TOKENIZER_SENTENCES: tuple[str, ...] = (
    "a photo of a cat.",
    "a photo of a dog.",
    "a photo of a car.",
    "a red rocket on a launch pad",
    "an astronaut in a white suit",
    "a cup of coffee on a table",
    "a cat sleeping on the sofa",
    "the deep field of the hubble telescope, with many galaxies",
    "a blue sky over the city at night",
    "two dogs playing in the park",
)

_SIGLIP_TEXT = {
    "context_length": 16,
    "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",  # a local-dir: folder reads its own tokenizer files
    "tokenizer_kwargs": {"clean": "canonicalize"},
    "width": 64,
    "heads": 2,
    "layers": 1,
    "no_causal_mask": True,
    "proj_bias": True,
    "pool_type": "last",
    "norm_kwargs": {"eps": 1e-6},
}
_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

#: open_clip ``model_cfg`` + ``preprocess_cfg`` of the tiny family folders: each the published
#: architecture's config (``open_clip/model_configs/*.json``, the pretrained tag's preprocessing)
#: with a small timm tower and a 1-layer text tower.
OPEN_CLIP_FAMILY_CFGS: dict[str, dict[str, Any]] = {
    # ViT-B-16-SigLIP with timm's 64-wide test ViT (160 px) in place of vit_base_patch16_siglip_224
    "siglip": {
        "model_cfg": {
            "embed_dim": 64,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {
                "image_size": 160,
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
            },
            "text_cfg": _SIGLIP_TEXT,  # vocab_size: the tokenizer's
        },
        "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic",
            "resize_mode": "squash",
        },
    },
    # EVA02-B-16 with eva02_tiny_patch14_224 in place of eva02_base_patch16_clip_224
    "eva02": {
        "model_cfg": {
            "embed_dim": 32,
            "custom_text": True,
            "vision_cfg": {
                "image_size": 224,
                "timm_model_name": "eva02_tiny_patch14_224",
                "timm_model_pretrained": False,
                "timm_pool": "token",
                "timm_proj": None,
            },
            "text_cfg": _CLIP_TEXT,
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    },
    # MobileCLIP-S2 with fastvit_mci0 (MobileCLIP-S0's image tower) in place of fastvit_mci2, on
    # 128 px instead of 256 (FastViT's convolutions and conditional position encoding take any
    # multiple of 32): a quarter of the compute for the tests
    "mobileclip": {
        "model_cfg": {
            "embed_dim": 32,
            "custom_text": True,
            "vision_cfg": {
                "timm_model_name": "fastvit_mci0",
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": None,
                "timm_drop": 0.0,
                "timm_drop_path": 0.0,
                "image_size": 128,
            },
            "text_cfg": {**_CLIP_TEXT, "no_causal_mask": True},
        },
        "preprocess_cfg": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"},
    },
}


def write_t5_tokenizer(folder: Path) -> int:
    """A tiny SigLIP-style (T5, unigram) tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``,
    trained on :data:`TOKENIZER_SENTENCES`; returns its vocabulary size."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Tokenizer

    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(
        list(TOKENIZER_SENTENCES), vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    vocab = [(piece, score) for piece, score in json.loads(trainer.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


def write_sentencepiece_tokenizer(folder: Path) -> int:
    """A tiny SigLIP (v1) tokenizer: a sentencepiece ``spiece.model`` with ``SiglipTokenizer``'s
    config, as ``google/siglip-*`` folders hold it (needs the ``sentencepiece`` package)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_SENTENCES),
        model_writer=model,
        vocab_size=80,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "SiglipTokenizer",
        "model_max_length": 64,
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return int(processor.get_piece_size())


def write_gemma_tokenizer(folder: Path) -> int:
    """A tiny SigLIP 2 (Gemma, byte-level BPE) tokenizer as ``tokenizer.json`` (no sentencepiece)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.train_from_iterator(
        list(TOKENIZER_SENTENCES), trainers.BpeTrainer(vocab_size=150, special_tokens=special)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    fast.model_max_length = 64
    fast.save_pretrained(str(folder))
    return len(fast)


def write_open_clip_family_dir(
    folder: str | Path, family: str, *, seed: int = 0, hf_tokenizer_name: str | None = None
) -> Path:
    """Write a seeded random open_clip model of ``family`` (a key of :data:`OPEN_CLIP_FAMILY_CFGS`).

    ``open_clip_config.json`` + ``open_clip_model.safetensors``, and for SigLIP the Hugging Face
    tokenizer files open_clip's ``local-dir:`` loader reads from the folder. Needs timm.
    ``hf_tokenizer_name`` replaces the SigLIP config's (an ``hf-hub:`` repository names itself there,
    as ``timm/ViT-B-16-SigLIP`` does).

    Returns
    -------
    Path
        ``folder``.
    """
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = json.loads(json.dumps(OPEN_CLIP_FAMILY_CFGS[family]))
    model_cfg = spec["model_cfg"]
    if family == "siglip":
        model_cfg["text_cfg"]["vocab_size"] = write_t5_tokenizer(folder)
        if hf_tokenizer_name is not None:
            model_cfg["text_cfg"]["hf_tokenizer_name"] = hf_tokenizer_name
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], **spec["preprocess_cfg"]}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    kwargs = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CustomTextCLIP(**kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


#: transformers ``SiglipConfig`` keyword arguments: a tiny one, and the shapes of
#: ``google/siglip-base-patch16-224`` (random weights here).
TRANSFORMERS_SIGLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
    },
    "base": {"text_config": {}, "vision_config": {}},  # SiglipConfig's defaults: siglip-base-patch16-224
}


def write_transformers_siglip_dir(
    folder: str | Path, *, config: str = "tiny", tokenizer: str = "gemma", seed: int = 0
) -> Path:
    """Write a seeded random transformers ``SiglipModel`` folder, laid out as published.

    ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``preprocessor_config.json``
    as ``google/siglip-base-patch16-224`` has it (a square resize, bicubic, mean/std 0.5), and a
    tokenizer: ``"gemma"`` (SigLIP 2's ``tokenizer.json``) or ``"sentencepiece"`` (SigLIP's
    ``spiece.model``, needs the ``sentencepiece`` package).

    Returns
    -------
    Path
        ``folder``.
    """
    from transformers import SiglipConfig, SiglipModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer == "gemma":
        vocab = write_gemma_tokenizer(folder)
    elif tokenizer == "sentencepiece":
        vocab = write_sentencepiece_tokenizer(folder)
    else:
        raise ValueError(f"tokenizer={tokenizer!r}; choose 'gemma' or 'sentencepiece'")
    kwargs = json.loads(json.dumps(TRANSFORMERS_SIGLIP_CONFIGS[config]))
    if config == "tiny":
        # the tokenizer's ids: its vocabulary, and end-of-text at SigLIP's id 1
        kwargs["text_config"].update(vocab_size=vocab, pad_token_id=1, bos_token_id=1, eos_token_id=1)
    else:  # the base shapes with the tiny tokenizer's ids (its 32,000-row table is random anyway)
        kwargs["text_config"].setdefault("vocab_size", 32000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(SiglipConfig(**kwargs))
    model.save_pretrained(str(folder), safe_serialization=True)
    size = int(model.config.vision_config.image_size)
    preprocessor = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": size, "width": size},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder


#: Full-size open_clip architectures of each family and the pretrained tag whose preprocessing
#: their published folders carry (``open_clip.get_pretrained_cfg``).
FULL_SIZE: dict[str, tuple[str, str]] = {
    "siglip": ("ViT-B-16-SigLIP", "webli"),
    "siglip2": ("ViT-B-16-SigLIP2", "webli"),
    "eva02": ("EVA02-B-16", "merged2b_s8b_b131k"),
    "mobileclip": ("MobileCLIP-S2", "datacompdr"),
    "clip": ("ViT-B-32", "laion2b_s34b_b79k"),
}


def write_open_clip_architecture_dir(folder: str | Path, architecture: str, tag: str, *, seed: int = 0) -> Path:
    """A full-size open_clip architecture with seeded random weights, as its published folder.

    ``open_clip_config.json`` holds the architecture's ``model_cfg`` and the tag's preprocessing
    (mean, std, interpolation, resize mode); an architecture whose text tower reads a Hugging Face
    tokenizer (SigLIP's) gets the tiny one of :func:`write_t5_tokenizer` in the folder (its ids are
    within any vocabulary), since the real one cannot be downloaded here.

    Returns
    -------
    Path
        ``folder``.
    """
    from safetensors.torch import save_file

    from ..models.open_clip_import import open_clip_module

    open_clip = open_clip_module()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(architecture)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip architecture {architecture!r}")
    if (model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name"):
        write_t5_tokenizer(folder)
    pretrained = open_clip.get_pretrained_cfg(architecture, tag)
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"]}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if pretrained.get(key) is not None:
            preprocess[key] = list(pretrained[key]) if isinstance(pretrained[key], tuple) else pretrained[key]
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
