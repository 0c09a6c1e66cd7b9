"""Text queries: the text tower of the model that embedded the images.

SEAM: :func:`encode_texts_open_clip` is a stand-in until ``dask_clip`` offers its own text
encoder (same per-process model cache, batching and devices as the image path). Replace its
body with that call; :meth:`SearchIndex.search_text <dask_clip.index.search.SearchIndex.search_text>`
and ``dask-clip serve`` take any ``list[str] -> float32 (Q, D)`` callable meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..spec import ModelSpec

__all__ = ["encode_texts_open_clip"]


def encode_texts_open_clip(spec: ModelSpec, texts: Sequence[str]) -> np.ndarray:
    """Encode ``texts`` with the open_clip model of ``spec`` (the per-process cache's).

    Parameters
    ----------
    spec
        The model that embedded the images.
    texts
        Q strings.

    Returns
    -------
    numpy.ndarray
        float32 (Q, D), unit length.

    Raises
    ------
    ValueError
        The model's text vocabulary is smaller than the tokenizer's (e.g. a tiny test model).
    """
    import open_clip
    import torch

    from ..models import apply_torch_threads, get_model

    loaded = get_model(spec)
    name = f"local-dir:{spec.model_dir}" if spec.model_dir is not None else spec.model
    tokens = open_clip.get_tokenizer(name)(list(texts))
    vocab = getattr(loaded.model, "vocab_size", None)
    if vocab is not None and tokens.numel() and int(tokens.max()) >= vocab:
        raise ValueError(
            f"the text tower of {name!r} has a vocabulary of {vocab} tokens, but open_clip's tokenizer "
            f"gives ids up to {int(tokens.max())}: this model cannot encode text"
        )
    tokens = tokens.to(loaded.device)
    if loaded.device.type == "cpu":
        apply_torch_threads()
    autocast = loaded.autocast_dtype is not None
    with torch.inference_mode(), torch.autocast(loaded.device.type, loaded.autocast_dtype, enabled=autocast):
        features = loaded.model.encode_text(tokens)
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
