"""Model families, a registry: each module here that defines ``FAMILY`` (a
:class:`~dask_clip.models.families.base.ModelFamily`) is one family.

==========================  =====================================================================
family                      what it loads
==========================  =====================================================================
``open_clip`` (priority 0)  open_clip architectures + pretrained tags, ``hf-hub:`` repositories,
                            checkpoint files, folders in open_clip's ``local-dir:`` layout (CLIP,
                            SigLIP / SigLIP 2, EVA-02, MobileCLIP ...)
``transformers_siglip`` (9) Hugging Face transformers ``SiglipModel`` folders (SigLIP, SigLIP 2
                            fixed-resolution); SigLIP 2 NaFlex (``Siglip2Model``) refused
``transformers`` (10)       Hugging Face transformers CLIP folders, and NeMo Curator's
                            ``model_dir`` root (``openai/clip-vit-large-patch14/`` in it)
==========================  =====================================================================

Adding a family is one module in this package (detect, load, preprocess, tokenizer) plus its
test: the registry finds the module on first use (never at import). When a folder matches
several families (LAION's Hugging Face repositories hold both open_clip's and transformers'
files) the lowest priority wins, as open_clip's own ``local-dir:`` loader prefers its files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...registry import ModuleRegistry
from .base import ModelDir, ModelFamily, check_regular_files

__all__ = ["ModelDir", "ModelFamily", "detect_model_dir", "families", "get_family"]

_FAMILIES = ModuleRegistry(__name__, "FAMILY", ModelFamily)


def families() -> list[ModelFamily]:
    """Every family of this package, in priority order (found on first call, then kept)."""
    return _FAMILIES.all()


def get_family(name: str) -> ModelFamily:
    """The family called ``name`` (a :class:`ModelDir`'s or a loaded model's ``kind``).

    Raises
    ------
    ValueError
        No such family (the message lists them).
    """
    by_name = {family.name: family for family in families()}
    if name not in by_name:
        raise ValueError(f"no model family {name!r}; the families are {sorted(by_name)}")
    return by_name[name]


def detect_model_dir(path: str | Path) -> ModelDir:
    """Which family's model a folder holds, with its weights, checked before anything loads.

    Parameters
    ----------
    path
        The ``model_dir`` as the user gave it (``~`` is expanded).

    Returns
    -------
    ModelDir

    Raises
    ------
    FileNotFoundError
        Not a folder; no family's layout; a layout without weights (never silently random)
        or without its preprocessing config.
    ValueError
        A config that is not a CLIP model's, preprocessing dask_clip cannot reproduce, a
        config that asks for remote code, or an entry that is not a regular file (a FIFO).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model_dir {str(folder)!r} is not a folder")
    check_regular_files(folder)
    known = families()
    for family in known:
        found = family.detect(folder)
        if found is not None:
            return dataclasses.replace(found, family=family)
    hints = [family.layout_hint for family in known]
    expected = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + ", " + hints[-1]
    raise FileNotFoundError(f"model_dir {str(folder)!r} holds no model dask_clip knows: expected {expected}")
