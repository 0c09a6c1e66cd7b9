"""TextEmbedder: CLIP text embeddings of a caption column, for frames without images."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backends
from ..columns import LIST_FLOAT32, STRING
from .model_settings import ModelSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    import dask.dataframe as dd

    from ..models.spec import ModelSpec

__all__ = ["TextEmbedder", "embed_texts"]

logger = logging.getLogger(__name__)
#: Key prefix of the caption-embedding tasks on the dashboard.
TASK_NAME = "clip_text"


@dataclass(frozen=True)
class TextEmbedder(ModelSettings):
    """Append CLIP text embeddings of a caption column, lazily on Dask or eagerly on one partition.

    The text-only counterpart of :class:`~dask_clip.ImageEmbedder` (which embeds captions next
    to images with ``text_column=``). Both key the per-worker model cache by the same
    :class:`~dask_clip.models.spec.ModelSpec`, so one loaded model serves both towers.

    Parameters
    ----------
    model, pretrained, model_dir, precision, device
        What to load; see :class:`~dask_clip.models.spec.ModelSpec`.
    normalize
        L2-normalise the embeddings (unit length).
    model_inference_batch_size
        Captions per forward pass.
    num_gpus_per_worker
        GPU share of one task (as for :class:`~dask_clip.ImageEmbedder`).
    verbose
        Log per-partition captions/s on the workers.
    text_column
        The caption column.
    output_column, error_column
        The ``list<float32>`` embedding column, and why a row has none (null, empty or
        non-text caption), else null.
    """

    text_column: str = "caption"
    output_column: str = "text_embedding"
    error_column: str = "text_embedding_error"

    def output_columns(self) -> list[tuple[str, str]]:
        """The columns this embedder adds, as (name, kind)."""
        return [(self.output_column, LIST_FLOAT32), (self.error_column, STRING)]

    def fingerprint(self) -> dict[str, Any]:
        """What defines the output (for resumable writers)."""
        model = self.model_fingerprint()
        columns = [self.text_column, *dict(self.output_columns())]
        return {"model": model, "normalize": self.normalize, "columns": columns}

    def validate(self, input_columns: Sequence[str] | None = None) -> None:
        """Check the configuration (and the input's columns) on the client.

        Raises
        ------
        ValueError, TypeError, FileNotFoundError
            With the valid choices in the message.
        """
        self.check_run_knobs()
        if self.output_column == self.error_column:
            raise ValueError(f"output_column and error_column are both {self.output_column!r}")
        self.spec.validate()
        if input_columns is not None:
            names = list(input_columns)
            if self.text_column not in names:
                raise ValueError(f"text_column={self.text_column!r} not in the columns {names}")
            for out in (self.output_column, self.error_column):
                if out in names:
                    raise ValueError(f"output column {out!r} already exists; pass another name")

    def __call__(self, ddf: dd.DataFrame) -> dd.DataFrame:
        """Append the text embedding and error columns to a Dask DataFrame, lazily.

        Returns
        -------
        dask.dataframe.DataFrame
            The same rows, index and columns, plus ``output_column`` (``list<float32>``) and
            ``error_column`` (string). Nothing is computed.
        """
        from ..steps.base import apply

        return apply(ddf, [self.as_step()], token=TASK_NAME)

    def as_step(self) -> Any:
        """This embedder as a :class:`~dask_clip.steps.Step` (:func:`dask_clip.steps.apply`)."""
        return TextEmbedding(self)

    def output_meta(self, meta: Any) -> Any:
        """The empty output frame for an input ``meta``."""
        out = meta.copy()
        for name, kind in self.output_columns():
            out[name] = backends.empty_column(meta, kind)
        return out

    def embed_partition(self, df: Any) -> Any:
        """Embed one pandas or cuDF DataFrame's captions eagerly (no Dask needed).

        Returns
        -------
        DataFrame
            ``df``'s rows in order, plus the two columns, of the same library as ``df``.
        """
        from ..models.cache import apply_torch_threads, get_model, gpu_share
        from .text import embed_text_rows

        started = time.perf_counter()
        out = df.copy(deep=False)
        n = len(df)
        if n == 0:
            for name, kind in self.output_columns():
                out[name] = backends.empty_column(df, kind)
            return out
        model = get_model(self.spec)
        if model.device.type == "cpu":
            apply_torch_threads()
        with gpu_share(model.device, self.num_gpus_per_worker):
            text = embed_text_rows(
                backends.string_rows(df[self.text_column]),
                model,
                batch_size=self.model_inference_batch_size,
                normalize=self.normalize,
                to_host=not backends.on_device(df),
            )
        out[self.output_column] = backends.output_column(df, LIST_FLOAT32, text.embeddings, text.valid)
        out[self.error_column] = backends.output_column(df, STRING, text.errors)
        if self.verbose:
            seconds = time.perf_counter() - started
            logger.info(
                "dask_clip text: %d captions (%d failed) in %.2fs, %.1f captions/s",
                n,
                int((~text.valid).sum()),
                seconds,
                n / max(seconds, 1e-9),
            )
        return out


def embed_texts(spec: ModelSpec, texts: Sequence[str], *, batch_size: int = 256, normalize: bool = True) -> np.ndarray:
    """Embed a list of texts (search queries, labels) with the process's model for ``spec``.

    Parameters
    ----------
    spec
        The model (the same cache as the embedders').
    texts
        Non-empty strings.
    batch_size
        Texts per forward pass.
    normalize
        Unit-length rows.

    Returns
    -------
    numpy.ndarray
        float32 (Q, D).

    Raises
    ------
    ValueError
        An empty or non-string text, or a model whose text vocabulary is smaller than its
        tokenizer's.
    """
    import torch

    from ..models.cache import apply_torch_threads, get_model
    from .text import caption_errors, encode_texts

    problems = [(i, e) for i, e in enumerate(caption_errors(list(texts))) if e is not None]
    if problems:
        raise ValueError(f"texts cannot be embedded: {problems[:5]}")
    model = get_model(spec)
    if model.device.type == "cpu":
        apply_torch_threads()
    features = encode_texts(model, list(texts), batch_size=batch_size)
    if normalize:
        features = torch.nn.functional.normalize(features, dim=-1)
    return features.cpu().numpy()


@dataclass(frozen=True)
class TextEmbedding:
    """The caption embedding step (the text tower alone)."""

    embedder: TextEmbedder
    name: str = "text_embedding"

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.embedder.text_column, STRING)]

    def outputs(self) -> list[tuple[str, str]]:
        return self.embedder.output_columns()

    def validate(self, meta: Any) -> None:
        self.embedder.validate(list(meta.columns))

    def fingerprint(self) -> dict[str, Any]:
        return self.embedder.fingerprint()

    def output_meta(self, meta: Any) -> Any:
        return self.embedder.output_meta(meta)

    def __call__(self, partition: Any) -> Any:
        return self.embedder.embed_partition(partition)
