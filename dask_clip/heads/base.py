"""The head interface: what a head declares, and what it receives at run time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..columns import FLOAT32

if TYPE_CHECKING:
    import torch

    from ..models.loaded import LoadedModel

__all__ = ["Head", "HeadFunction", "HeadInputs"]


@dataclass(frozen=True)
class HeadInputs:
    """What a loaded head is called with, for the rows of one forward batch that have an image.

    Attributes
    ----------
    image : torch.Tensor
        float32 (M, D), the L2-normalised image embeddings, on the model's device.
    """

    image: torch.Tensor


HeadFunction = Callable[[HeadInputs], Any]
"""A loaded head: ``HeadInputs -> values`` — float32 (M,) for a ``"float32"`` column,
float32 (M, K) for ``"list<float32>"``, M strings for ``"string"``."""


class Head(ABC):
    """A module on the embeddings that adds one output column.

    Subclasses are frozen dataclasses with a ``column`` field (the output column's name) and
    whatever configuration they need (a weights path, label names ...); they must be cheap to
    pickle, and equal configurations must compare equal (workers cache loaded heads by value).

    Attributes
    ----------
    column : str
        The output column.
    kind : str
        Its type, one of :data:`dask_clip.columns.COLUMN_KINDS` (default ``"float32"``).

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Norm(Head):                       # doctest: +SKIP
    ...     column: str = "norm"
    ...     def load(self, model):
    ...         return lambda inputs: inputs.image.norm(dim=1)
    >>> ImageEmbedder(..., heads=[Norm()])       # doctest: +SKIP
    """

    column: str
    kind: ClassVar[str] = FLOAT32

    def input_dim(self) -> int | None:
        """The embedding width the head was made for (checked on the client), or None for any."""
        return None

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Check the configuration on the client (e.g. that a weights file exists); default: nothing."""

    @abstractmethod
    def load(self, model: LoadedModel) -> HeadFunction:
        """Build the head on the worker, on ``model.device``; called once per worker process."""
