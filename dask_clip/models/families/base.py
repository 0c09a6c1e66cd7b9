"""What every model family shares: the detected folder (:class:`ModelDir`), the family record
(:class:`ModelFamily`), and the checks every folder passes before anything loads.

Light: no torch, open_clip or transformers import. A folder is data, never code: every file in
it must be a regular file (a FIFO as the weights would block the loader forever, a device would
never end), and a config that asks for the folder's own Python code (``trust_remote_code``
anywhere, e.g. open_clip's ``text_cfg.tokenizer_kwargs``) is refused (:func:`check_no_remote_code`).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "OPEN_CLIP",
    "SENTENCEPIECE_PACKAGES",
    "TRANSFORMERS",
    "WEIGHT_FILE_PATTERNS",
    "ModelDir",
    "ModelFamily",
    "check_no_remote_code",
    "check_regular_files",
    "find_weights",
    "missing_packages",
    "read_json",
]

OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"
# open_clip's `local-dir:` loader looks for these (open_clip.factory._find_checkpoint_in_dir).
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pth")


def find_weights(model_dir: Path) -> list[Path]:
    """Weight files in a ``local-dir:`` folder, safetensors first.

    Parameters
    ----------
    model_dir
        A folder in open_clip's ``local-dir:`` layout.

    Returns
    -------
    list of Path
        Candidate checkpoint files; empty when the folder holds no weights.
    """
    found = [p for pattern in WEIGHT_FILE_PATTERNS for p in sorted(model_dir.glob(pattern))]
    return sorted(found, key=lambda p: p.suffix != ".safetensors")


@dataclass(frozen=True)
class ModelDir:
    """A model folder as detected from its files.

    Attributes
    ----------
    kind : str
        The name of the family that loads it (:data:`OPEN_CLIP`, :data:`TRANSFORMERS`,
        ``"transformers_siglip"`` ...).
    folder : Path
        The folder holding the model's files (NeMo's root resolved to its CLIP subfolder).
    weights : tuple of Path
        The weight files, the preferred one first.
    layout : str
        How it was found: ``"open_clip local-dir"``, ``"transformers"`` or
        ``"NeMo Curator model_dir"``.
    family : ModelFamily or None
        The family that detected it (set by :func:`~dask_clip.models.families.detect_model_dir`).
    """

    kind: str
    folder: Path
    weights: tuple[Path, ...]
    layout: str
    family: ModelFamily | None = field(default=None, compare=False, repr=False)

    def embed_dim(self) -> int | None:
        """The width D of the image and text embeddings, from the config (None if unknown)."""
        return self._family().dir_embed_dim(self)

    def describe(self) -> dict[str, Any]:
        """What ``dask-clip info --model-dir`` reports (JSON-able)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "layout": self.layout,
            "folder": str(self.folder),
            "weights": [p.name for p in self.weights],
            "embed_dim": self.embed_dim(),
        }
        # the family's own keys too (a tokenizer, how it scores zero-shot labels ...)
        return {**out, **self._family().describe(self)}

    def _family(self) -> ModelFamily:
        if self.family is None:
            raise ValueError(f"{self.folder} was not detected by the registry (detect_model_dir)")
        return self.family


@dataclass(frozen=True)
class ModelFamily:
    """One model family: how to recognise its folders, and how to load, preprocess and tokenize.

    A family is one module of :mod:`dask_clip.models.families` that defines ``FAMILY``; the
    registry finds it there (:func:`dask_clip.models.families.families`). Every function but
    ``create`` runs on the client too and must stay light (no torch import at module level).

    Attributes
    ----------
    name : str
        The ``kind`` of its :class:`ModelDir` and of the loaded model (``"open_clip"``).
    priority : int
        Folders are offered to the families in increasing priority; the first that recognises
        one loads it.
    layout_hint : str
        Its folder layout in words, for the error listing what a folder may hold.
    detect : (Path) -> ModelDir or None
        The folder as this family's model, None when it is not; raises for a folder of this
        family that is broken (no weights, a config asking for remote code).
    dir_embed_dim : (ModelDir) -> int or None
        The declared width D, from the folder's config.
    describe : (ModelDir) -> dict
        ``{"preprocess": ..., "loads_with": ...}`` for ``dask-clip info``, and any other key the
        family reports (``"tokenizer"``, ``"zero_shot"``, ``"needs"``...).
    create : (ModelSpec, ModelDir or None) -> torch.nn.Module
        The model on the CPU in float32, with ``encode_image`` (float (N, 3, H, W) -> (N, D))
        and ``encode_text`` (the tokenizer's output -> (N, D)); raises ``ModelLoadError``.
    model_embed_dim : (module) -> int or None
        The width D the loaded module declares (None: found by running one image).
    preprocess : (module) -> PreprocessConfig
        The loaded module's eval preprocessing.
    tokenizer : (LoadedModel) -> Tokenizer
        Its text tower's tokenizer.
    needs : (str, str) or None
        An optional package the family needs on the client and workers, and what to pip
        install for it (``("transformers", "dask-clip[hf]")``), checked by
        ``ModelSpec.validate``; None when it needs nothing beyond dask_clip's dependencies.
    """

    name: str
    priority: int
    layout_hint: str
    detect: Callable[[Path], ModelDir | None]
    dir_embed_dim: Callable[[ModelDir], int | None]
    describe: Callable[[ModelDir], dict[str, Any]]
    create: Callable[..., Any]
    model_embed_dim: Callable[[Any], int | None]
    preprocess: Callable[[Any], Any]
    tokenizer: Callable[[Any], Any]
    needs: tuple[str, str] | None = None


#: What transformers' sentencepiece tokenizers (``SiglipTokenizer``, a ``T5Tokenizer`` converted
#: from ``spiece.model``) import: the ``siglip`` extra.
SENTENCEPIECE_PACKAGES = ("protobuf", "sentencepiece")
# pip name -> module, where they differ
_MODULES = {"protobuf": "google.protobuf"}


def missing_packages(packages: Collection[str]) -> list[str]:
    """The packages (pip names) of ``packages`` that cannot be imported here, sorted."""
    import importlib.util

    missing = []
    for package in sorted(packages):
        try:
            found = importlib.util.find_spec(_MODULES.get(package, package)) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            missing.append(package)
    return missing


def check_no_remote_code(config: object, where: str) -> None:
    """Refuse a model config that asks a loader to run Python code shipped with the model.

    open_clip passes ``text_cfg.tokenizer_kwargs`` to ``AutoTokenizer.from_pretrained``; with
    ``trust_remote_code`` there, transformers imports the ``auto_map`` modules of the folder (or
    hub repository). The key is looked for at any depth, so no loader's spelling is missed.

    Raises
    ------
    ValueError
        The config sets ``trust_remote_code`` to anything but false/null.
    """
    stack = [(config, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{path}.{key}" if path else str(key)
                if key == "trust_remote_code" and item not in (False, None):
                    raise ValueError(
                        f"{where} sets {here}={json.dumps(item)}: it asks to run Python code shipped with the model, "
                        "which dask_clip never does; remove the entry (the standard CLIP tokenizers need no code)"
                    )
                stack.append((item, here))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def check_regular_files(folder: Path) -> None:
    """Refuse a model folder holding anything a loader could open that is not a regular file.

    A FIFO as ``model.safetensors`` blocks the loader forever (the watchdog sees a live worker);
    a character device never ends. Subfolders are allowed (NeMo's layout, caches); symlinks are
    followed, as the loaders follow them; a broken symlink fails to open, so it passes here.

    Raises
    ------
    ValueError
        Names the first such entry and what it is.
    """
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            continue
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise ValueError(
            f"model_dir {str(folder)!r}: {entry.name} is {kind}; weights, configs and tokenizer files must be "
            "regular files (a loader would block or read forever)"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a clear ``ValueError`` for bad JSON or another JSON type."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value
