"""CUDA's dtype rules, enforced on the CPU: a test mode for the low-precision paths.

CPU kernels accept mixed dtypes that CUDA kernels reject. ``F.layer_norm(half_x, weight=float)``
runs on CPU and raises "expected scalar type Half but found Float" on CUDA (pytorch#135969), so a
suite that runs only on CPU passes while the GPU path cannot load its model.
:class:`CudaDtypeRules` makes the CPU as strict as CUDA for the ops that matter here: inside it,
an op below whose floating-point operands differ in dtype raises :class:`MixedDtypeError`.

It is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, not a ``TorchFunctionMode``:
it sees the ATen ops (``native_layer_norm``, ``addmm``, ``convolution`` ...) that every Python
entry point ends in, also those inside composite functions (``F.multi_head_attention_forward``,
``F.linear``, ``torch.matmul``), which a function mode sees only at the outermost call.

Autocast policy. Autocast sits above this mode in the dispatcher: where it casts an op's inputs
(CUDA autocast casts ``linear``/``matmul``/``mm``/``bmm``/``addmm``/``baddbmm``/``conv*``/SDPA to
the lower precision and ``layer_norm``/``group_norm`` to float32, see "Autocast Op Reference" in
torch's AMP documentation), the op arrives here with matching dtypes and passes. CPU autocast
casts the same matrix ops but not the norms, so a ``layer_norm``/``group_norm`` that arrives
mixed while autocast is enabled is let through: on CUDA, autocast would have cast it to float32.

Not checked: ``batch_norm``, whose CUDA kernels take half/bf16 input with float32 parameters
(the mixed case AMP relies on).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CudaDtypeRules", "MixedDtypeError", "cuda_dtype_rules"]

aten = torch.ops.aten


class MixedDtypeError(RuntimeError):
    """An op got operands of different floating dtypes, which its CUDA kernel rejects."""


def _floats(values: Any) -> list[torch.Tensor]:
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


def _all_operands(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return _floats([*args, *kwargs.values()])


def _norm_operands(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    # native_layer_norm(input, normalized_shape, weight, bias, eps);
    # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
    return _floats(args)


def _attention_operands(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """q, k, v must agree; a float32 or bool mask is allowed beside any of them."""
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    operands = _floats([q, k, v])
    if isinstance(mask, torch.Tensor) and mask.is_floating_point() and mask.dtype not in (torch.float32, q.dtype):
        operands.append(mask)
    return operands


def _mha_operands(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    # _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
    #                              proj_weight, proj_bias, mask=None, ...)
    return _floats([*args[:3], *args[5:9]])


_OPERANDS: dict[Any, Callable[[tuple, dict], list[torch.Tensor]]] = {
    aten.layer_norm.default: _norm_operands,
    aten.native_layer_norm.default: _norm_operands,
    aten.group_norm.default: _norm_operands,
    aten.native_group_norm.default: _norm_operands,
    aten.linear.default: _all_operands,
    aten.addmm.default: _all_operands,
    aten.mm.default: _all_operands,
    aten.bmm.default: _all_operands,
    aten.baddbmm.default: _all_operands,
    aten.matmul.default: _all_operands,
    aten.conv1d.default: _all_operands,
    aten.conv2d.default: _all_operands,
    aten.conv3d.default: _all_operands,
    aten.convolution.default: _all_operands,
    aten.scaled_dot_product_attention.default: _attention_operands,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _attention_operands,
    aten._scaled_dot_product_attention_math.default: _attention_operands,
    aten._native_multi_head_attention.default: _mha_operands,
}
# CUDA autocast casts these to float32; CPU autocast may leave them mixed (CPU kernels take it).
_AUTOCAST_FP32 = {
    aten.layer_norm.default,
    aten.native_layer_norm.default,
    aten.group_norm.default,
    aten.native_group_norm.default,
}


_STATE = threading.local()


def _autocast_on() -> bool:
    return any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))


class _AutocastProbe(TorchFunctionMode):
    """Notes, at each torch call, whether autocast is on. Below autocast in the dispatcher (where
    :class:`CudaDtypeRules` runs) ``torch.is_autocast_enabled`` reads False: autocast excludes
    itself before it re-dispatches."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        previous = getattr(_STATE, "autocast", False)
        _STATE.autocast = previous or _autocast_on()
        try:
            return func(*args, **(kwargs or {}))
        finally:
            _STATE.autocast = previous


class CudaDtypeRules(TorchDispatchMode):
    """Raise :class:`MixedDtypeError` where a CUDA kernel would reject mixed floating dtypes.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> x = torch.randn(2, 8, dtype=torch.float16)
    >>> with cuda_dtype_rules():                                 # doctest: +SKIP
    ...     F.layer_norm(x, (8,), weight=torch.ones(8))         # float32 weight: raises
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        operands = _OPERANDS.get(func)
        if operands is not None:
            dtypes = {t.dtype for t in operands(args, kwargs)}
            if len(dtypes) > 1 and not (func in _AUTOCAST_FP32 and getattr(_STATE, "autocast", False)):
                names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                raise MixedDtypeError(
                    f"{func} got operands of dtypes {names}: CPU accepts this, CUDA raises "
                    "(e.g. 'expected scalar type Half but found Float')"
                )
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_dtype_rules() -> Iterator[None]:
    """Run the block under :class:`CudaDtypeRules` (with the autocast state it needs noted)."""
    with CudaDtypeRules(), _AutocastProbe():
        yield
