"""LAION's CLIP-based NSFW detector: the probability that an image is NSFW, from its embedding.

LAION-AI/CLIP-based-NSFW-Detector published an AutoKeras model (``clip_autokeras_binary_nsfw``,
for ViT-L/14 embeddings): a Normalization layer (per-feature mean and variance), Dense(64),
ReLU, Dense(512), ReLU, Dense(256), ReLU, Dense(1), sigmoid. NeMo Curator loads a torch port
of it, ``clip_autokeras_binary_nsfw.pth`` (``nemo_curator/models/nsfw.py``): a module with
``norm`` (buffers ``mean`` and ``variance``, applied as ``(x - mean) / sqrt(variance)``) and
``linear_1`` .. ``linear_4`` with ReLUs between them and a sigmoid at the end. That torch
layout is what :class:`NSFWHead` reads. Its input is the L2-normalised image embedding (LAION's
embeddings, made with clip-retrieval, are normalised), which is what
:class:`~dask_clip.heads.HeadInputs` holds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ._weights import CheckpointHead
from .options import FilterRule, HeadOptions, finite_number

if TYPE_CHECKING:
    import torch

    from ..models.loaded import LoadedModel
    from .base import HeadFunction, HeadInputs

__all__ = ["NSFWHead"]

# Output widths of linear_1 .. linear_4 (as modules.NSFW_WIDTHS, without importing torch).
_WIDTHS = (64, 512, 256, 1)


@dataclass(frozen=True)
class NSFWHead(CheckpointHead):
    """LAION's CLIP-based NSFW detector on the image embeddings: a probability in [0, 1].

    NeMo Curator's ``ImageNSFWFilterStage`` keeps rows with a score below 0.5.

    Parameters
    ----------
    path
        ``clip_autokeras_binary_nsfw.pth`` (the torch layout NeMo Curator loads), or a folder
        holding it: NeMo Curator's ``model_dir`` (where it sits under
        ``laion/clip-autokeras-binary-nsfw/``) or that folder itself.
    column
        Output column.

    Notes
    -----
    The published weights were trained on ViT-L/14 (768-d) embeddings; a model of another
    width is refused on the client.
    """

    file_names: ClassVar[tuple[str, ...]] = (
        "laion/clip-autokeras-binary-nsfw/clip_autokeras_binary_nsfw.pth",
        "clip_autokeras_binary_nsfw.pth",
    )
    title: ClassVar[str] = "LAION CLIP-based NSFW detector"

    path: str
    column: str = "nsfw_score"

    def width_key(self) -> str:
        return "linear_1.weight"

    def layout(self, dim: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"norm.mean": (dim,), "norm.variance": (dim,)}
        width = dim
        for i, out in enumerate(_WIDTHS, start=1):
            shapes[f"linear_{i}.weight"] = (out, width)
            shapes[f"linear_{i}.bias"] = (out,)
            width = out
        return shapes

    def build(self, dim: int) -> torch.nn.Module:
        from .modules import NSFWDetector

        return NSFWDetector(dim)

    def load(self, model: LoadedModel) -> HeadFunction:
        module = self.load_module(model)

        def score(inputs: HeadInputs) -> torch.Tensor:
            return module(inputs.image).squeeze(1)

        return score


def _probability(keyword: str, value: object) -> float:
    p = finite_number(keyword, value)
    if not 0 < p <= 1:  # a probability: <= 0 removes every row, > 1 none
        raise ValueError(f"{keyword}={value!r} must be a probability in (0, 1] (NeMo Curator uses 0.5)")
    return p


def _add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--nsfw-model",
        metavar="PATH",
        help="LAION NSFW detector weights (clip_autokeras_binary_nsfw.pth, or NeMo's model_dir): adds nsfw_score (0-1)",
    )


CLI = HeadOptions(
    "nsfw",
    priority=20,
    add_arguments=_add_arguments,
    heads=lambda args: [NSFWHead(args.nsfw_model)] if args.nsfw_model else [],
    rule=FilterRule(
        "max_nsfw",
        "nsfw_score",
        "nsfw_column",
        "<",
        "keep nsfw_score < P (a probability; NeMo Curator uses 0.5)",
        metavar="P",
        check=_probability,
    ),
)
