"""The torch modules of the published heads, parameter names as published (imports torch).

Written from the published descriptions (see :mod:`dask_clip.heads.aesthetic` and
:mod:`dask_clip.heads.nsfw` for the sources); their state dicts load the published checkpoints
with ``strict=True``.
"""

from __future__ import annotations

import torch

__all__ = ["AESTHETIC_LAYERS", "NSFW_WIDTHS", "AestheticMLP", "NSFWDetector"]

#: (output width, dropout after it) of each Linear of the aesthetic predictor's ``layers``.
AESTHETIC_LAYERS = ((1024, 0.2), (128, 0.2), (64, 0.1), (16, None), (1, None))
#: Output widths of the NSFW detector's ``linear_1`` .. ``linear_4``.
NSFW_WIDTHS = (64, 512, 256, 1)


class AestheticMLP(torch.nn.Module):
    """LAION's improved aesthetic predictor: ``layers`` = Linear(D, 1024), Dropout(0.2),
    Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1)
    (no activations: the published code has its ReLUs commented out).

    Parameters
    ----------
    dim
        Embedding width D (768 for ViT-L/14).
    """

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        steps: list[torch.nn.Module] = []
        width = dim
        for out, dropout in AESTHETIC_LAYERS:
            steps.append(torch.nn.Linear(width, out))
            if dropout is not None:
                steps.append(torch.nn.Dropout(dropout))
            width = out
        self.layers = torch.nn.Sequential(*steps)  # the Linears sit at indices 0, 2, 4, 6, 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, D) unit embeddings -> float32 (N, 1) scores."""
        return self.layers(x)


class _Standardize(torch.nn.Module):
    """Keras' Normalization layer as NeMo Curator ports it: ``(x - mean) / sqrt(variance)``."""

    mean: torch.Tensor
    variance: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


class NSFWDetector(torch.nn.Module):
    """LAION's CLIP-based NSFW detector in NeMo Curator's torch layout: ``norm``, then
    ``linear_1`` (D -> 64), ReLU, ``linear_2`` (-> 512), ReLU, ``linear_3`` (-> 256), ReLU,
    ``linear_4`` (-> 1), sigmoid.

    Parameters
    ----------
    dim
        Embedding width D (768 for ViT-L/14).
    """

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.norm = _Standardize(dim)
        self.linear_1 = torch.nn.Linear(dim, NSFW_WIDTHS[0])
        self.linear_2 = torch.nn.Linear(NSFW_WIDTHS[0], NSFW_WIDTHS[1])
        self.linear_3 = torch.nn.Linear(NSFW_WIDTHS[1], NSFW_WIDTHS[2])
        self.linear_4 = torch.nn.Linear(NSFW_WIDTHS[2], NSFW_WIDTHS[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, D) unit embeddings -> float32 (N, 1) probabilities."""
        x = self.norm(x)
        x = torch.relu(self.linear_1(x))
        x = torch.relu(self.linear_2(x))
        x = torch.relu(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x))
