"""The embedding steps: images (with their heads and captions, in one pass on the same batches)
and captions alone. Each wraps the preset users configure — :class:`~dask_clip.ImageEmbedder`,
:class:`~dask_clip.TextEmbedder` — so the same object runs alone (``embedder(ddf)``) or in a chain
(:func:`~dask_clip.steps.apply`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..columns import STRING
from .base import IMAGE

if TYPE_CHECKING:
    import dask.dataframe as dd

    from ..embedder import ImageEmbedder
    from ..text_embedder import TextEmbedder

__all__ = ["ImageEmbedding", "TextEmbedding"]


@dataclass(frozen=True)
class ImageEmbedding:
    """The image embedding step: the embedding, its error column, the caption columns and CLIP
    score (``text_column=``) and one column per head, all from one decode and forward pass."""

    embedder: ImageEmbedder
    name: str = "image_embedding"

    def inputs(self) -> list[tuple[str, str]]:
        text = [(self.embedder.text_column, STRING)] if self.embedder.text_column is not None else []
        return [(self.embedder.image_column, IMAGE), *text]

    def outputs(self) -> list[tuple[str, str]]:
        return self.embedder.output_columns()

    def validate(self, meta: Any) -> None:
        self.embedder.validate(list(meta.columns))

    def fingerprint(self) -> dict[str, Any]:
        return self.embedder.fingerprint()

    def output_meta(self, meta: Any) -> Any:
        return self.embedder.output_meta(meta)  # drops or retypes the image column too

    def bind(self, ddf: dd.DataFrame) -> ImageEmbedding:
        """Resolve ``image_kind="auto"`` from the input (reads a few rows of an untyped column)."""
        if self.embedder.image_column not in ddf.columns:
            return self  # apply says which column is missing
        return replace(self, embedder=replace(self.embedder, image_kind=self.embedder._resolve_kind(ddf)))

    def __call__(self, partition: Any) -> Any:
        return self.embedder.embed_partition(partition)


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
