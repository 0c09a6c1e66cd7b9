"""Import open_clip without transformers and timm where the model does not need them.

open_clip imports transformers and timm whenever they are installed (``open_clip.hf_model``,
``open_clip.timm_model``), for the architectures whose text tower is a Hugging Face model or
whose image tower is a timm one. A worker that loads an open_clip folder of an open_clip-native
model (the OpenAI and LAION ViTs) imports open_clip with them hidden; everything else in the
process still imports them normally (transformers folders, HF tokenizers and timm helpers,
which open_clip imports lazily). If a hidden tower kind is needed later in the same process,
the part of open_clip that holds it is imported again (:func:`import_open_clip`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading
from collections.abc import Collection
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["OPTIONAL", "folder_needs", "import_open_clip", "open_clip_module"]

#: package -> (open_clip module that imports it, the class open_clip.model builds from it)
OPTIONAL = {
    "transformers": ("open_clip.hf_model", "HFTextEncoder"),
    "timm": ("open_clip.timm_model", "TimmModel"),
}
_LOCK = threading.Lock()


def folder_needs(folder: str | Path) -> set[str]:
    """The optional packages an open_clip ``local-dir:`` folder's model needs: ``"transformers"``
    for a Hugging Face text tower, ``"timm"`` for a timm image tower; both when its config cannot
    be read (open_clip then reports the problem)."""
    try:
        config = json.loads((Path(folder) / "open_clip_config.json").read_text(encoding="utf-8"))
        model_cfg: Any = config["model_cfg"]
        text_cfg, vision_cfg = model_cfg.get("text_cfg", {}), model_cfg.get("vision_cfg", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set(OPTIONAL)
    if not isinstance(text_cfg, dict) or not isinstance(vision_cfg, dict):
        return set(OPTIONAL)
    needs = set()
    if "hf_model_name" in text_cfg:
        needs.add("transformers")
    if "timm_model_name" in vision_cfg:
        needs.add("timm")
    return needs


def import_open_clip(needs: Collection[str] = tuple(OPTIONAL)) -> ModuleType:
    """``import open_clip``, hiding the optional packages not in ``needs`` when open_clip is
    imported for the first time; a package in ``needs`` that an earlier call hid is brought
    back (its open_clip module imported again) if it is installed."""
    with _LOCK:
        if "open_clip" not in sys.modules:
            from ..runtime.torchvision_import import import_torchvision

            import_torchvision()  # which open_clip imports: without TorchDynamo
            hidden = [name for name in OPTIONAL if name not in needs and name not in sys.modules]
            for name in hidden:
                sys.modules[name] = None  # type: ignore[assignment]  # the import fails: open_clip skips it
            try:
                import open_clip
            finally:
                for name in hidden:
                    del sys.modules[name]
            return open_clip
        import open_clip

        for name in needs:
            module_name, cls = OPTIONAL[name]
            module = sys.modules.get(module_name)
            hid = module is not None and getattr(module, name, True) is None
            if hid and importlib.util.find_spec(name) is not None:
                reloaded = importlib.reload(module)  # type: ignore[arg-type]
                setattr(open_clip.model, cls, getattr(reloaded, cls))  # what the tower builders call
        return open_clip


def open_clip_module() -> ModuleType:
    """open_clip as this process has it, for callers that need no particular tower: imported
    now where it is not yet, in full, with torchvision first imported without TorchDynamo
    (:mod:`dask_clip.runtime.torchvision_import`)."""
    if "open_clip" not in sys.modules:
        from ..runtime.torchvision_import import import_torchvision

        import_torchvision()
    import open_clip

    return open_clip
