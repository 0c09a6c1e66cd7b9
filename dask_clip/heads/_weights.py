"""Heads whose weights are a published checkpoint file: finding it, checking its layout, loading it.

A checkpoint is read as distributed: a ``torch.save`` state dict (``.pth``/``.pt``/``.bin``,
read with ``torch.load(weights_only=True)``: tensors only, no code) or a safetensors file.
Its parameter names and shapes are checked on the client, against the layout of the
published module, before any graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import Head

if TYPE_CHECKING:
    import torch

    from ..models.loaded import LoadedModel
    from .base import HeadFunction

__all__ = ["CheckpointHead", "read_shapes", "read_state_dict"]


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a checkpoint file, without loading more than needed.

    Raises
    ------
    ValueError
        The file is not a state dict of tensors.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as err:  # safetensors raises its own SafetensorError for a bad header
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors on the CPU (safetensors, or ``torch.load(weights_only=True)``).

    Raises
    ------
    ValueError
        The file is not a state dict of tensors (or not a checkpoint at all).
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError ("not a zip file"), EOFError ...
        raise ValueError(f"{path} is not a torch state dict readable with weights_only=True: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


@dataclass(frozen=True)
class CheckpointHead(Head):
    """A head computed by a small published module whose weights are one checkpoint file.

    Subclasses name the module's layout (:meth:`layout`), build it (:meth:`build`), and say
    which files to look for when ``path`` is a folder (:attr:`file_names`, e.g. NeMo Curator's
    ``model_dir`` layout). The embedding width is the checkpoint's own.
    """

    #: Files tried, in order, when ``path`` is a folder (relative to it).
    file_names: ClassVar[tuple[str, ...]] = ()
    #: What the head is, for messages.
    title: ClassVar[str] = "head"

    path: str
    column: str = "score"

    def weights_file(self) -> Path:
        """The checkpoint: ``path`` itself, or the first of :attr:`file_names` in it.

        Raises
        ------
        FileNotFoundError
            Nothing there.
        """
        path = Path(self.path).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            for name in self.file_names:
                if (path / name).is_file():
                    return path / name
            raise FileNotFoundError(
                f"{self.title} weights: {str(path)!r} is a folder without {' or '.join(self.file_names)}"
            )
        raise FileNotFoundError(f"{self.title} weights: {str(path)!r} does not exist")

    def layout(self, dim: int) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape of the published module for D-dimensional embeddings."""
        raise NotImplementedError

    def width_key(self) -> str:
        """The parameter whose last dimension is the embedding width D."""
        raise NotImplementedError

    def build(self, dim: int) -> torch.nn.Module:
        """The module, with random weights, for D-dimensional embeddings."""
        raise NotImplementedError

    def input_dim(self) -> int:
        shapes = read_shapes(self.weights_file())
        if self.width_key() not in shapes:
            self._check(shapes, None)
        return int(shapes[self.width_key()][-1])

    def validate(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise TypeError(f"{type(self).__name__} needs path=, the weights file (or a folder holding it)")
        if not isinstance(self.column, str) or not self.column:
            raise TypeError(f"{type(self).__name__}: column must be a non-empty string")
        shapes = read_shapes(self.weights_file())
        self._check(shapes, int(shapes[self.width_key()][-1]) if self.width_key() in shapes else None)

    def _check(self, shapes: dict[str, tuple[int, ...]], dim: int | None) -> None:
        expected = self.layout(dim if dim is not None else -1)
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        wrong = {k: (shapes[k], expected[k]) for k in expected if k in shapes and shapes[k] != expected[k]}
        if missing or unexpected or wrong:
            details = []
            if missing:
                details.append(f"missing {missing}")
            if unexpected:
                details.append(f"unexpected {unexpected}")
            if wrong:
                details.append("shapes " + ", ".join(f"{k} {a} (expected {b})" for k, (a, b) in wrong.items()))
            raise ValueError(f"{self.weights_file()} is not the published {self.title} layout: {'; '.join(details)}")

    def load_module(self, model: LoadedModel) -> torch.nn.Module:
        """The module with the checkpoint's weights, in eval mode, on the model's device."""
        state = read_state_dict(self.weights_file())
        module = self.build(int(state[self.width_key()].shape[-1]))
        module.load_state_dict(state, strict=True)
        return module.eval().requires_grad_(False).to(model.device)

    def load(self, model: LoadedModel) -> HeadFunction:
        raise NotImplementedError
