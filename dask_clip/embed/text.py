"""The text tower: captions to CLIP text embeddings, with the model's own tokenizer.

The tokenizer is loaded once per worker process, beside the model it belongs to (it is kept
on the :class:`~dask_clip.models.LoadedModel`): open_clip's ``get_tokenizer`` for open_clip
models, the folder's own tokenizer (``AutoTokenizer``) for transformers folders, called as
transformers' ``CLIPProcessor`` calls it (padding to the longest caption, truncating to the
model's context). A caption that is null, empty or not text gets a null embedding and a short
reason, like an image that cannot be decoded; every other row keeps its place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..models.families import get_family
from ..models.families.base import TRANSFORMERS

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

__all__ = [
    "EMPTY_CAPTION",
    "MISSING_CAPTION",
    "TextResult",
    "Tokenizer",
    "caption_errors",
    "embed_text_rows",
    "encode_texts",
    "get_tokenizer",
]

logger = logging.getLogger(__name__)

MISSING_CAPTION = "missing caption (null)"
EMPTY_CAPTION = "empty caption"
_LOCK = threading.Lock()


class Tokenizer:
    """A model's tokenizer: ``texts -> keyword arguments of model.encode_text``.

    Parameters
    ----------
    tokenize
        ``list[str] -> dict[str, torch.Tensor]`` on the CPU.
    name
        What it is, for messages.
    """

    def __init__(self, tokenize: Any, name: str, vocab_size: int | None = None) -> None:
        self._tokenize = tokenize
        self._lock = threading.Lock()  # transformers' Rust tokenizers refuse concurrent calls ("Already borrowed")
        self.name = name
        self.vocab_size = vocab_size

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        with self._lock:
            tokens = self._tokenize(list(texts))
        ids = next(iter(tokens.values()))
        if self.vocab_size is not None and ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(
                f"the text tower has a vocabulary of {self.vocab_size} tokens, but its tokenizer ({self.name}) "
                f"gives ids up to {int(ids.max())}: this model cannot encode text"
            )
        return tokens

    def __repr__(self) -> str:
        return f"Tokenizer({self.name})"


def get_tokenizer(model: LoadedModel) -> Tokenizer:
    """The tokenizer of a loaded model, loaded once per process and kept beside the model."""
    if model.tokenizer is None:
        with _LOCK:
            if model.tokenizer is None:
                if model.spec is None:
                    raise ValueError("this LoadedModel has no spec; load it with dask_clip.models.get_model")
                model.tokenizer = get_family(model.kind).tokenizer(model)
    return model.tokenizer


def _trims_exactly(module: torch.nn.Module) -> bool:
    """Whether an open_clip model's text tower may run on captions cut to their longest length.

    open_clip pads every caption to the context length (77) with zeros. Under the causal mask
    of open_clip's ``CLIP`` text tower, no token attends to a later one, and the ``argmax``
    pool reads the end-of-text token: the padding after the longest caption changes nothing,
    yet costs most of the compute (web captions are 10-30 tokens).
    """
    from open_clip.model import CLIP

    return (
        isinstance(module, CLIP)
        and getattr(module, "text_pool_type", None) == "argmax"
        and getattr(module, "attn_mask", None) is not None
        and getattr(module.transformer, "batch_first", True) is True
    )


def _encode_open_clip_trimmed(module: Any, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on ``text`` (long (N, 77), zero-padded), without the
    columns after the longest caption: the same values (see :func:`_trims_exactly`)."""
    from open_clip.transformer import text_global_pool

    length = max(1, int((text != 0).sum(dim=1).max())) if text.numel() else text.shape[1]
    text = text[:, :length]
    cast_dtype = module.transformer.get_cast_dtype()
    x = module.token_embedding(text).to(cast_dtype) + module.positional_embedding[:length].to(cast_dtype)
    x = module.transformer(x, attn_mask=module.attn_mask[:length, :length])
    x = text_global_pool(module.ln_final(x), text, "argmax")
    projection = module.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_texts(model: LoadedModel, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Embed texts with the model's text tower, in batches (halved on out-of-memory).

    Parameters
    ----------
    model
        The worker's loaded model.
    texts
        Non-empty strings.
    batch_size
        Texts per forward pass.

    Returns
    -------
    torch.Tensor
        float32 (N, D) on the model's device, not normalised.
    """
    from .infer import is_out_of_memory

    tokenizer = get_tokenizer(model)
    trimmed = model.kind != TRANSFORMERS and _trims_exactly(model.model)
    out = torch.empty((len(texts), model.embed_dim), dtype=torch.float32, device=model.device)
    start, size = 0, max(1, batch_size)
    with torch.inference_mode():
        while start < len(texts):
            chunk = texts[start : start + size]
            tokens = {k: v.to(model.device, non_blocking=True) for k, v in tokenizer(chunk).items()}
            try:
                with torch.autocast(
                    model.device.type,
                    dtype=model.autocast_dtype or torch.float32,
                    enabled=model.autocast_dtype is not None,
                ):
                    if trimmed:
                        features = _encode_open_clip_trimmed(model.model, tokens["text"])
                    else:
                        features = model.model.encode_text(**tokens)
                    out[start : start + len(chunk)] = features.float()
            except Exception as err:
                if not is_out_of_memory(err) or len(chunk) == 1:
                    raise
                size = max(1, len(chunk) // 2)
                logger.warning("dask_clip: out of memory at %d texts; retrying with %d", len(chunk), size)
                continue
            start += len(chunk)
    return out


def caption_errors(values: Sequence[object]) -> list[str | None]:
    """Why each caption cannot be embedded (None where it can).

    Parameters
    ----------
    values
        One Python object per row (``dask_clip.backends.string_rows`` gives them).

    Returns
    -------
    list of str or None
        ``"missing caption (null)"``, ``"empty caption"`` (also only whitespace) or
        ``"caption is not text (<type>)"``.
    """
    errors: list[str | None] = []
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            errors.append(MISSING_CAPTION)
        elif not isinstance(value, str):
            errors.append(f"caption is not text ({type(value).__name__})")
        elif not value.strip():
            errors.append(EMPTY_CAPTION)
        else:
            errors.append(None)
    return errors


@dataclass
class TextResult:
    """Text embeddings of N rows, M of which have a usable caption.

    Attributes
    ----------
    embeddings : torch.Tensor
        float32 (M, D), the valid rows in order (unit length when asked for).
    unit : torch.Tensor
        float32 (M, D), the same rows L2-normalised (for the CLIP score).
    valid : numpy.ndarray
        bool (N,).
    errors : list of str or None
        N entries: why a row has no text embedding, else None.
    """

    embeddings: torch.Tensor
    unit: torch.Tensor
    valid: np.ndarray
    errors: list[str | None]


def embed_text_rows(
    values: Sequence[object], model: LoadedModel, *, batch_size: int, normalize: bool = True, to_host: bool = True
) -> TextResult:
    """Embed one partition's captions; bad captions get a reason instead.

    Parameters
    ----------
    values
        One caption per row (str, or None/anything else for a row error).
    model
        The worker's loaded model.
    batch_size
        Texts per forward pass.
    normalize
        Return unit-length embeddings.
    to_host
        Return the tensors on the CPU.

    Returns
    -------
    TextResult
    """
    errors = caption_errors(values)
    valid = np.array([e is None for e in errors], dtype=bool)
    texts = [str(v) for v, ok in zip(values, valid) if ok]
    if texts:
        features = encode_texts(model, texts, batch_size=batch_size)
    else:
        features = torch.zeros((0, model.embed_dim), dtype=torch.float32, device=model.device)
    unit = torch.nn.functional.normalize(features, dim=-1)
    embeddings = unit if normalize else features
    if to_host:
        embeddings, unit = embeddings.cpu(), unit.cpu()
    return TextResult(embeddings=embeddings, unit=unit, valid=valid, errors=errors)
