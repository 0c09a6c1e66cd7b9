"""The model knobs every embedder shares (:class:`~dask_clip.ImageEmbedder`,
:class:`~dask_clip.TextEmbedder`): one frozen dataclass both extend, instead of a copy in each."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from .. import config
from ..models.spec import ModelSpec
from ..validation import DEFAULT_NUM_GPUS_PER_WORKER, check_gpu_share, check_int

__all__ = ["ModelSettings"]


@dataclass(frozen=True)
class ModelSettings:
    """What model runs and how (NeMo Curator's stage knobs and open_clip's names, the first
    fields of every embedder, in this order).

    Parameters
    ----------
    model, pretrained, model_dir, precision, device
        What to load; see :class:`~dask_clip.models.spec.ModelSpec`.
    normalize
        L2-normalise the embeddings (unit length).
    model_inference_batch_size
        Rows per forward pass.
    num_gpus_per_worker
        GPU share of one task, in (0, 1].
    verbose
        Log per-partition rates on the workers.
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    model_dir: str | None = None
    precision: str = field(default_factory=config.default("precision"))
    device: str = "auto"
    normalize: bool = True
    model_inference_batch_size: int = field(default_factory=config.default("batch-size"))
    num_gpus_per_worker: float = DEFAULT_NUM_GPUS_PER_WORKER
    verbose: bool = False

    @cached_property
    def spec(self) -> ModelSpec:
        """The model part of the configuration: what workers key their cache by."""
        model_dir = None if self.model_dir is None else str(self.model_dir)
        return ModelSpec(self.model, self.pretrained, model_dir, self.precision, self.device)

    def model_fingerprint(self) -> dict[str, Any]:
        """The model as the output's fingerprint records it (the device does not change it)."""
        model = asdict(self.spec)
        model.pop("device")
        return model

    def check_run_knobs(self) -> None:
        """``model_inference_batch_size`` and ``num_gpus_per_worker`` (ValueError/TypeError)."""
        check_int("model_inference_batch_size", self.model_inference_batch_size, 1)
        check_gpu_share(self.num_gpus_per_worker)
