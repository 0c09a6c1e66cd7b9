"""A loaded model and what running it needs: device, precision, the low-precision conversion.

Plain data and small functions, shared by every model family (:mod:`dask_clip.models.families`)
and by the pipeline; the cache that builds these lives in :mod:`dask_clip.models.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..image.preprocess import PreprocessConfig
from .families.base import OPEN_CLIP
from .spec import ModelSpec

__all__ = ["LoadedModel", "resolve_device", "to_low_precision", "weights_dtype"]


@dataclass
class LoadedModel:
    """A loaded, eval-mode CLIP model (both towers) and what running it needs.

    Attributes
    ----------
    model : torch.nn.Module
        The open_clip model, or a transformers one behind the same two methods
        (:class:`~dask_clip.models.hf.TransformersCLIP`): ``encode_image`` takes float (N, 3, H, W),
        ``encode_text`` the tokenizer's output.
    preprocess : PreprocessConfig
        Its eval preprocessing.
    device : torch.device
    autocast_dtype : torch.dtype or None
        Autocast dtype (``"fp16"``/``"bf16"`` precision); None runs without autocast.
    embed_dim : int
        Width D of the (N, D) embeddings.
    input_dtype : torch.dtype
        The dtype of the model's input: float32, or the weights' dtype for ``"pure_*"``
        precisions and ``"auto"`` on CUDA (weights held in bf16/fp16, LayerNorms computing in
        float32: :func:`to_low_precision`).
    batch_size_cap : int or None
        The largest batch that fitted in memory after an out-of-memory back-off; None until
        one happens, and again once :data:`CAP_PROBE_BATCHES` batches in a row fitted under it
        (an out-of-memory caused by another task's burst does not shrink every later batch).
    batches_under_cap : int
        Batches run since the cap was last lowered or raised.
    spec : ModelSpec or None
        What was loaded (the text tower's tokenizer is chosen from it).
    kind : str
        ``"open_clip"``, or ``"transformers"`` for a :class:`~dask_clip.models.hf.TransformersCLIP`.
    tokenizer : Tokenizer or None
        The text tower's tokenizer, loaded on first use beside the model
        (:func:`dask_clip.embed.text.get_tokenizer`).
    """

    model: Any  # an open_clip CLIP or a TransformersCLIP (torch.nn.Module with encode_image / encode_text)
    preprocess: PreprocessConfig
    device: torch.device
    autocast_dtype: torch.dtype | None
    embed_dim: int
    input_dtype: torch.dtype = torch.float32
    batch_size_cap: int | None = None
    batches_under_cap: int = 0
    spec: ModelSpec | None = None
    kind: str = OPEN_CLIP
    tokenizer: Any = None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → ``cuda:0`` (the worker's own GPU under dask-cuda) when CUDA works, else CPU.

    A CUDA device always gets its index (``"cuda"`` → ``cuda:<current>``): torchvision keeps one
    nvJPEG decoder per device string and rebuilds it, leaking the old one, when it changes.
    """
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision: only ``"fp16"``/``"bf16"`` run under autocast."""
    if precision in ("fp16", "bf16"):
        return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return None


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the weights are held in: fp16/bf16 for ``"pure_fp16"``/``"pure_bf16"``, and fp16
    for ``"auto"`` on CUDA; float32 otherwise.

    Why fp16 by default: same tensor-core speed as bf16 on Hopper, and 8 times finer rounding —
    parity to open_clip's fp32 reference 0.0017 against 0.013 for bf16 (autocast or weights
    alike; ViT-B-32, measured on CPU, benchmarks/README.md). Rows whose fp16 embedding overflows
    are recomputed under bf16 autocast (:func:`dask_clip.embed.pipeline.embed_rows`).
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"pure_bf16": torch.bfloat16, "pure_fp16": torch.float16}.get(precision, torch.float32)


def to_low_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Hold ``model``'s weights in ``dtype`` (fp16/bf16), its LayerNorms computing in float32.

    What open_clip's own ``precision="fp16"``/``"bf16"`` builds (``open_clip.factory``
    ``_set_model_device_and_precision``): ``convert_weights_to_lp`` for open_clip's own towers
    (linear, conv and attention weights, the projections; embeddings stay float32 and are cast
    where used), the whole model for timm towers, and every LayerNorm a ``LayerNormFp32`` with
    float32 weights, which computes in float32 and returns its input's dtype. A LayerNorm left
    with float32 weights under half activations fails on CUDA ("expected scalar type Half but
    found Float", pytorch#135969) though CPU kernels accept it: see :mod:`dask_clip.models.cuda_rules`.
    transformers models are converted whole, their LayerNorms the same way.

    Parameters
    ----------
    model
        An open_clip model or a :class:`~dask_clip.models.hf.TransformersCLIP`, in float32, eval mode.
    dtype
        ``torch.float16`` or ``torch.bfloat16``.

    Returns
    -------
    torch.nn.Module
        ``model``, converted in place.
    """
    from open_clip.model import CLIP, CustomTextCLIP, convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    native = isinstance(model, (CLIP, CustomTextCLIP)) and not any(
        type(m).__name__ in ("TimmModel", "HFTextEncoder") for m in model.modules()
    )
    if native:
        convert_weights_to_lp(model, dtype=dtype)
    else:  # timm / Hugging Face towers: convert_weights_to_lp only knows open_clip's own modules
        model.to(dtype)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # exact types: a subclass with its own forward (timm's LayerNorm2d ...) keeps it
            if type(child) in (torch.nn.LayerNorm, LayerNorm, LayerNormFp32):
                weight = child.weight
                norm = LayerNormFp32(
                    child.normalized_shape,
                    eps=child.eps,
                    elementwise_affine=child.elementwise_affine,
                    bias=child.bias is not None,
                    device=weight.device if weight is not None else None,
                    dtype=torch.float32,
                )
                norm.load_state_dict(child.state_dict())  # copies the values into float32
                norm.train(child.training).requires_grad_(False)
                setattr(parent, name, norm)
    return model
