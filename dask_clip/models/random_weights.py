"""Tiny, seeded, randomly initialised open_clip models in the ``local-dir:`` layout.

What ``dask-clip demo --random-weights`` runs, and the tests' models
(:mod:`dask_clip.testing` re-exports these): they load through exactly the path real weights
take (``model_dir=``), without a model hub. torch and open_clip are imported when a model is
written, not with this module.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TINY_MODEL_CFG", "TINY_TEXT_MODEL_CFG", "write_model_dir"]

TINY_MODEL_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
#: :data:`TINY_MODEL_CFG` with the vocabulary of open_clip's tokenizer (49,408 tokens), so that its
#: text tower takes real captions. Its image tower is TINY_MODEL_CFG's, weight for weight (the
#: seeded initialisation draws the image tower's weights first).
TINY_TEXT_MODEL_CFG: dict = {**TINY_MODEL_CFG, "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "vocab_size": 49408}}


def write_model_dir(
    folder: str | Path,
    *,
    model_cfg: dict | None = None,
    preprocess_cfg: dict | None = None,
    seed: int = 0,
    weights: str | None = "safetensors",
) -> Path:
    """Write a seeded random open_clip model as ``open_clip_config.json`` plus weights.

    Parameters
    ----------
    folder
        Created if missing.
    model_cfg
        open_clip ``model_cfg`` (default: :data:`TINY_MODEL_CFG`, a 2-layer ViT on 64 px).
    preprocess_cfg
        open_clip ``preprocess_cfg`` overrides (size defaults to the vision tower's size).
    seed
        Weight initialisation seed.
    weights
        ``"safetensors"`` (``open_clip_model.safetensors``), ``"bin"``
        (``open_clip_pytorch_model.bin``, a ``torch.save`` state dict) or None (config only).

    Returns
    -------
    Path
        ``folder``.
    """
    import torch

    from .open_clip_import import open_clip_module

    open_clip = open_clip_module()
    from open_clip.factory import CLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(model_cfg or TINY_MODEL_CFG)
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], **(preprocess_cfg or {})}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    if weights is None:
        return folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    elif weights == "bin":
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"weights={weights!r}; choose 'safetensors', 'bin' or None")
    del open_clip
    return folder
