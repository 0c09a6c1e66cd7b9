"""A fingerprint of a model folder's weights, recorded wherever embeddings are written and
checked wherever they are compared with new ones.

The path of a ``model_dir`` says nothing about what it holds: weights replaced in place give
embeddings of another space, and a search, a resumed run or a dedup that mixes the two returns
nonsense without a word. The fingerprint is SHA-256 over each weight file's name and size and
sampled content: its first and last MiB and 16 blocks of 64 KiB spread between (about 3 MiB
read per file, milliseconds even for a 1.7 GB ViT-L). Retrained or swapped weights differ in
all of these (the tensors fill the file); it is a guard against mistakes, not against a file
crafted to collide.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import ModelSpec

__all__ = ["WeightsChangedError", "check_weights", "weights_fingerprint"]

_EDGE = 1 << 20
_BLOCK = 64 << 10
_BLOCKS = 16


class WeightsChangedError(ValueError):
    """Embeddings made with other weights than the model folder holds now."""


def _file_digest(path: str, digest: Any) -> None:
    size = os.path.getsize(path)
    digest.update(f"{os.path.basename(path)}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE + _BLOCKS * _BLOCK:
            digest.update(f.read())
            return
        digest.update(f.read(_EDGE))
        step = (size - 2 * _EDGE) // (_BLOCKS + 1)
        for i in range(1, _BLOCKS + 1):
            f.seek(_EDGE + i * step)
            digest.update(f.read(_BLOCK))
        f.seek(size - _EDGE)
        digest.update(f.read(_EDGE))


def weights_fingerprint(spec: ModelSpec) -> str | None:
    """``"sha256:<hex>"`` of the weights of ``spec.model_dir``; None for models named by a hub
    id or pretrained tag (the name identifies them) and for seeded random weights."""
    if spec.model_dir is None:
        return None
    found = spec.resolve_model_dir()
    digest = hashlib.sha256()
    for path in sorted(found.weights):
        _file_digest(str(path), digest)
    return f"sha256:{digest.hexdigest()[:32]}"


def check_weights(recorded: str | None, spec: ModelSpec | None, what: str) -> None:
    """Refuse to compare ``what`` (embeddings recorded with the fingerprint ``recorded``) with
    new embeddings of ``spec`` when its weights differ now.

    Raises
    ------
    WeightsChangedError
        Both fingerprints are known and differ.
    """
    if recorded is None or spec is None:
        return  # written before fingerprints were recorded, or a model named by hub id/tag
    current = weights_fingerprint(spec)
    if current is not None and current != recorded:
        raise WeightsChangedError(
            f"{what} were made with other weights than model_dir {spec.model_dir!r} holds now (fingerprint "
            f"{recorded}, now {current}): new embeddings would not be comparable with them — restore the "
            "weights, or embed again with these"
        )
