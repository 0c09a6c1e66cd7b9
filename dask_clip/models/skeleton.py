"""Build an open_clip model without initialising weights that a checkpoint then overwrites.

``open_clip.create_model`` builds the model on the CPU with its random initialisation (1.9 s for
ViT-B-32, several times that for ViT-L/14 on 2 cores) and then copies the checkpoint over it.
Here the parameters are created on the ``meta`` device (no storage, no initialisation), and the
checkpoint's tensors are assigned in place of them (``load_state_dict(assign=True)``): no random
numbers and no copy. open_clip still does everything else (config, model class, preprocess
config, the checkpoint's format conversions in :func:`open_clip.load_checkpoint`).

Non-persistent buffers (open_clip's causal text ``attn_mask``) are not in a checkpoint, so they
are built for real and put back after the model is moved to ``meta``. Anything still on
``meta`` after loading (a tensor this scheme does not know how to fill, a ``.npz`` checkpoint
that loads by in-place copies) makes :func:`create_assigned` return None, and the caller builds
the model the ordinary way. Random-weight models never come here: they keep open_clip's seeded
initialisation.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["create_assigned", "meta_tensors"]

logger = logging.getLogger(__name__)

_STATE = threading.local()  # only the building thread sees the meta behaviour
_PATCH_LOCK = threading.Lock()
_ORIGINAL_REGISTER_PARAMETER = torch.nn.Module.register_parameter
_ORIGINAL_REGISTER_BUFFER = torch.nn.Module.register_buffer


def _register_parameter(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    _ORIGINAL_REGISTER_PARAMETER(self, name, param)
    if getattr(_STATE, "active", False) and type(param) is torch.nn.Parameter and not param.is_meta:
        # The CPU storage from torch.empty was never touched; init functions on meta are no-ops.
        self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _register_buffer(self: torch.nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
    _ORIGINAL_REGISTER_BUFFER(self, name, tensor, persistent=persistent)
    if getattr(_STATE, "active", False) and not persistent and tensor is not None and not tensor.is_meta:
        _STATE.kept.append((self, name, tensor))


#: torch.nn.init's in-place initialisers, as modules and open_clip call them (``init.normal_(w)``)
_INIT_FUNCTIONS = {
    name: getattr(torch.nn.init, name)
    for name in dir(torch.nn.init)
    if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name))
}


def _skipping_meta(original: Any) -> Any:
    @functools.wraps(original)
    def init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_STATE, "active", False) and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return original(tensor, *args, **kwargs)

    return init


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[list[tuple[torch.nn.Module, str, torch.Tensor]]]:
    """Modules built by this thread inside the block get ``meta`` parameters, and
    ``torch.nn.init``'s initialisers skip them (as transformers' ``no_init_weights`` does: on
    ``meta`` they would only go through torch's Python reference kernels, which import
    TorchDynamo, 2 s, to run nothing); yields the list of (module, name, tensor) of the
    non-persistent buffers they registered (real tensors)."""
    with _PATCH_LOCK:
        _STATE.active, _STATE.kept = True, []
        torch.nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
        torch.nn.Module.register_buffer = _register_buffer  # type: ignore[method-assign]
        for name, original in _INIT_FUNCTIONS.items():
            setattr(torch.nn.init, name, _skipping_meta(original))
        try:
            yield _STATE.kept
        finally:
            torch.nn.Module.register_parameter = _ORIGINAL_REGISTER_PARAMETER  # type: ignore[method-assign]
            torch.nn.Module.register_buffer = _ORIGINAL_REGISTER_BUFFER  # type: ignore[method-assign]
            for name, original in _INIT_FUNCTIONS.items():
                setattr(torch.nn.init, name, original)
            _STATE.active, _STATE.kept = False, []


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "Model initialized randomly" for ``load_weights=False``: not true here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def meta_tensors(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s parameters and buffers that hold no data (on ``meta``)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.is_meta]


def _assign_state_dict(model: torch.nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
    """``load_state_dict(assign=True)``, each tensor first cast to the dtype the model built
    (assign keeps the checkpoint's dtype: an fp16 checkpoint would give an fp16 model)."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    cast = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and value.is_floating_point() and value.dtype != target.dtype:
            cast[key] = value.to(target.dtype)
        else:
            cast[key] = value
    return type(model).load_state_dict(model, cast, strict=strict, assign=True)


def create_assigned(name: str, checkpoint: str | Path, **create_kwargs: Any) -> torch.nn.Module | None:
    """``open_clip.create_model(name, ...)`` with ``checkpoint``'s weights, built on ``meta``.

    Parameters
    ----------
    name
        What ``open_clip.create_model`` takes: a built-in architecture or ``"local-dir:FOLDER"``.
    checkpoint
        The weights file (``.safetensors``, or a ``torch.save`` state dict read with
        ``weights_only=True``) that open_clip would load for ``name``.
    **create_kwargs
        Further ``open_clip.create_model`` arguments (``force_quick_gelu`` ...).

    Returns
    -------
    torch.nn.Module or None
        The float32 model on the CPU, in train mode as open_clip returns it; None when some
        tensor could not be filled this way (the caller then builds it the ordinary way).

    Raises
    ------
    Exception
        What open_clip raises for a bad config or checkpoint (a size mismatch, a missing key,
        a corrupt safetensors file).
    """
    from .open_clip_import import open_clip_module

    open_clip = open_clip_module()
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        with _parameters_on_meta() as registered:
            # pretrained_text=False: an hf text tower must not fetch its base weights.
            model = open_clip.create_model(
                name, load_weights=False, pretrained_text=False, device="meta", **create_kwargs
            )
            kept = list(registered)
    finally:
        logging.getLogger().removeFilter(quiet)
    for module, buffer_name, tensor in kept:  # put back what .to("meta") emptied
        current = module._buffers.get(buffer_name)
        if current is not None and current.is_meta:
            module._buffers[buffer_name] = tensor
    # open_clip's own reader and format conversions, then an assigning load into this model only.
    model.load_state_dict = functools.partial(_assign_state_dict, model)
    try:
        open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    finally:
        del model.load_state_dict
    missing = meta_tensors(model)
    if missing:
        logger.info("dask_clip: %s has tensors no checkpoint fills (%s); building it in full", name, missing[:5])
        return None
    return model
