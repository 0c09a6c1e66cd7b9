"""Import torchvision without importing TorchDynamo.

torchvision imports TorchDynamo (with sympy and torch.distributed's FSDP) in two places that no
CLIP model runs: ``torchvision.ops.roi_align`` imports ``torch._dynamo.utils`` at module level
for ``is_compile_supported``, which it calls only when it runs deterministically on a GPU, and
``torchvision.tv_tensors`` (imported by ``transforms.v2``) decorates ``wrap`` with
``torch.compiler.disable``, which imports Dynamo to mark the function. That is about 2 s of CPU:
a third of a worker's start on a 2-core machine, paid by each spawned worker, by the CLI's fork
server, and by every process a test suite starts. PyTorch's maintainers call an eager Dynamo
import undesirable for eager-mode users (pytorch/vision#8436, which made roi_align's compile
lazy but kept this import).

:func:`import_torchvision` imports torchvision and ``transforms.v2.functional`` with a stand-in
``torch._dynamo`` whose two names defer to the real ones on first use (``is_compile_supported``
calls the real one; ``disable`` applies the real ``torch._dynamo.disable`` when the function is
first called), and removes the stand-in at once: a later ``import torch._dynamo``
(``torch.compile``, user code) imports the real package. If a torchvision release imports
anything else from Dynamo, the stand-in's import fails and torchvision is imported as usual.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
import types
from typing import Any

__all__ = ["import_torchvision"]

logger = logging.getLogger(__name__)
_DYNAMO, _DYNAMO_UTILS = "torch._dynamo", "torch._dynamo.utils"
_LOCK = threading.Lock()


def _is_compile_supported(device_type: Any) -> Any:
    """torch._dynamo.utils.is_compile_supported, imported on the first call."""
    return importlib.import_module(_DYNAMO_UTILS).is_compile_supported(device_type)


def _disable(fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
    """torch._dynamo.disable, applied to ``fn`` when ``fn`` is first called (eager calls then run
    ``fn`` as the disabled function does; under ``torch.compile`` the real one is in place)."""
    if fn is None:  # @disable(recursive=...)
        return functools.partial(_disable, recursive=recursive, **kwargs)
    disabled: list[Any] = []

    @functools.wraps(fn)
    def call(*args: Any, **call_kwargs: Any) -> Any:
        if not disabled:
            disabled.append(importlib.import_module(_DYNAMO).disable(fn, recursive, **kwargs))
        return disabled[0](*args, **call_kwargs)

    return call


def _stand_ins() -> dict[str, types.ModuleType]:
    package = types.ModuleType(_DYNAMO, "stand-in while torchvision imports: see dask_clip.runtime.torchvision_import")
    package.__path__ = []  # a package, so that the submodule's import finds it
    package.disable = _disable  # type: ignore[attr-defined]  # what torch.compiler.disable calls
    utils = types.ModuleType(_DYNAMO_UTILS, package.__doc__)
    utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    return {_DYNAMO: package, _DYNAMO_UTILS: utils}


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, without importing ``torch._dynamo`` where it is not imported yet.

    Returns
    -------
    module
        The torchvision package, imported in full (models, ops, transforms, io), and
        ``torchvision.transforms.v2.functional``.
    """
    with _LOCK:
        if "torchvision" in sys.modules or _DYNAMO in sys.modules:
            import torchvision

            return torchvision
        import torch  # torch itself first: the stand-ins name one of its subpackages

        stand_ins = _stand_ins()
        sys.modules.update(stand_ins)
        try:
            import torchvision
            import torchvision.transforms.v2.functional  # through tv_tensors
        except ImportError as err:
            # a release that imports more from Dynamo: forget the half-imported torchvision
            logger.debug("torchvision with a stand-in for torch._dynamo failed (%r): importing it as usual", err)
            for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
                del sys.modules[name]
        finally:
            for name, module in stand_ins.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
            # (torch's own __dict__: getattr would import the real Dynamo through torch's __getattr__)
            if vars(torch).get("_dynamo") is stand_ins[_DYNAMO]:
                delattr(torch, "_dynamo")
        import torchvision

        return torchvision
