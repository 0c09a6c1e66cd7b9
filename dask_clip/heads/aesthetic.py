"""LAION's improved aesthetic predictor: an AVA-like score (about 1-10) from a CLIP image embedding.

The published module (christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``;
NeMo Curator's ``nemo_curator/models/aesthetics.py`` builds the same) is an ``nn.Sequential``
held as ``layers``: Linear(D, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1). Its ReLUs are commented out, so
in eval mode it is a chain of affine maps. Its input is the L2-normalised image embedding of
OpenAI's ViT-L/14 (D = 768), which is what :class:`~dask_clip.heads.HeadInputs` holds.

Checkpoints read as distributed:

- ``sac+logos+ava1-l14-linearMSE.pth`` from LAION's repository (a ``torch.save`` state dict);
- ``model.safetensors`` of ``ttj/sac-logos-ava1-l14-linearMSE``, which NeMo Curator downloads
  to ``<model_dir>/ttj/sac-logos-ava1-l14-linearMSE/model.safetensors``.

Both hold ``layers.{0,2,4,6,7}.{weight,bias}``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ._weights import CheckpointHead
from .options import FilterRule, HeadOptions

# The published module's Linears as (output width, dropout after it); as modules.AESTHETIC_LAYERS,
# repeated here so that checking a file's layout on the client does not import torch.
_LAYERS = ((1024, 0.2), (128, 0.2), (64, 0.1), (16, None), (1, None))

if TYPE_CHECKING:
    import torch

    from ..models.loaded import LoadedModel
    from .base import HeadFunction, HeadInputs

__all__ = ["AestheticHead"]


@dataclass(frozen=True)
class AestheticHead(CheckpointHead):
    """LAION's improved aesthetic predictor on the image embeddings: one float32 column.

    The score is on the AVA-like scale of the predictor's training data, about 1 to 10 (not
    0-1); LAION-Aesthetics subsets keep rows scoring >= 5, >= 6 or >= 6.5.

    Parameters
    ----------
    path
        The checkpoint (``sac+logos+ava1-l14-linearMSE.pth`` or the ``model.safetensors`` NeMo
        Curator downloads), or a folder holding it: NeMo Curator's ``model_dir`` (where it sits
        under ``ttj/sac-logos-ava1-l14-linearMSE/``) or that folder itself.
    column
        Output column.

    Notes
    -----
    The published weights were trained on ViT-L/14 (768-d) embeddings; a model of another
    width is refused on the client.
    """

    file_names: ClassVar[tuple[str, ...]] = (
        "ttj/sac-logos-ava1-l14-linearMSE/model.safetensors",
        "model.safetensors",
        "sac+logos+ava1-l14-linearMSE.pth",
    )
    title: ClassVar[str] = "LAION aesthetic predictor"

    path: str
    column: str = "aesthetic_score"

    def width_key(self) -> str:
        return "layers.0.weight"

    def layout(self, dim: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        width, index = dim, 0
        for out, dropout in _LAYERS:
            shapes[f"layers.{index}.weight"] = (out, width)
            shapes[f"layers.{index}.bias"] = (out,)
            index += 2 if dropout is not None else 1
            width = out
        return shapes

    def build(self, dim: int) -> torch.nn.Module:
        from .modules import AestheticMLP

        return AestheticMLP(dim)

    def load(self, model: LoadedModel) -> HeadFunction:
        module = self.load_module(model)

        def score(inputs: HeadInputs) -> torch.Tensor:
            return module(inputs.image).squeeze(1)

        return score


def _add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--aesthetic-model",
        metavar="PATH",
        help="LAION aesthetic predictor weights (sac+logos+ava1-l14-linearMSE.pth, NeMo's model.safetensors, or "
        "NeMo's model_dir): adds aesthetic_score (~1-10)",
    )


CLI = HeadOptions(
    "aesthetic",
    priority=10,
    add_arguments=_add_arguments,
    heads=lambda args: [AestheticHead(args.aesthetic_model)] if args.aesthetic_model else [],
    rule=FilterRule(
        "min_aesthetic",
        "aesthetic_score",
        "aesthetic_column",
        ">=",
        "keep aesthetic_score >= S (LAION's predictor, ~1-10; LAION-Aesthetics used 5, 6, 6.5)",
        metavar="S",
    ),
)
