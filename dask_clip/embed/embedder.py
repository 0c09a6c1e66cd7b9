"""ImageEmbedder: append CLIP image embeddings to a Dask (or pandas, or cuDF) DataFrame."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backends, config
from ..columns import FLOAT32, LIST_FLOAT32, STRING, UINT64
from ..heads import Head
from ..image.sources import ImageSource, ReadLimits, detect_source, get_source, image_kinds, source_for_type
from ..io.fetch import check_protocols
from ..io.parquet_schema import parquet_column_type
from ..steps.base import IMAGE
from ..validation import (
    DECODE_DEVICES,
    ON_ERROR,
    SCHEDULES,
    check_choice,
    check_int,
    check_timeout,
)
from .model_settings import ModelSettings

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["ImageEmbedder", "clip_scores"]

logger = logging.getLogger(__name__)
#: Key prefix of the embedding tasks, what the dashboard's task stream and progress bars show.
TASK_NAME = "clip_embed"


@dataclass(frozen=True)
class ImageEmbedder(ModelSettings):
    """Append CLIP image embeddings to a DataFrame, lazily on Dask or eagerly on one partition.

    Holds configuration only; each worker process loads the model once, on first use.

    Parameters
    ----------
    model, pretrained, model_dir, precision, device
        What to load; see :class:`~dask_clip.models.spec.ModelSpec`. ``pretrained=None`` asks for
        seeded random weights.

    Where ``precision``, ``model_inference_batch_size`` and the read limits
    (``max_image_pixels``, ``max_decode_bytes``, ``max_image_bytes``, ``allowed_protocols``,
    ``read_timeout``) are not passed, they come from ``dask.config``'s ``dask_clip`` namespace
    when the embedder is made (:mod:`dask_clip.config`); the defaults below are its shipped ones.
    normalize
        L2-normalise embeddings (unit length).
    model_inference_batch_size
        Images per forward pass (NeMo Curator's name). Halved automatically on GPU OOM.
    num_gpus_per_worker
        GPU share of one task (NeMo Curator's name): at most ``round(1 / num_gpus_per_worker)``
        tasks of a worker process use its GPU at once, sharing its one model, whatever the
        worker's thread count (:func:`~dask_clip.local_cluster` also starts that many task
        threads per GPU worker). No effect on CPU.
    verbose
        Log per-partition images/s on the workers (logger ``"dask_clip.embed.embedder"``, level INFO;
        the worker setup plugin and the CLI show it).
    remove_image_data
        Drop the image column from the output.
    image_column, output_column, error_column
        Input image column; output ``list<float32>`` embedding column; output error column
        (a short reason for rows without an embedding, else null).
    on_error
        ``"null"``: a bad image gives a null embedding and a reason; ``"raise"``: raise
        :class:`~dask_clip.errors.ImageDecodeError` naming the row.
    image_kind
        ``"auto"`` (from the column's dtype or values) or a registered image source:
        ``"bytes"`` (encoded images), ``"path"`` (local paths or fsspec URLs) or ``"pixels"``
        (uint8 (H, W, 3) arrays, or a flat Arrow ``list<uint8>`` with
        ``height_column``/``width_column``); see :mod:`dask_clip.image.sources`.
    height_column, width_column
        Shape columns for flat ``list<uint8>`` pixel columns.
    max_image_pixels
        Images with more pixels are refused before decoding (decompression bombs).
    max_decode_bytes
        Decoded RGB bytes one image may take while it is decoded (default 256 MiB: an image of
        Pillow's 89.5-megapixel limit fits). A larger JPEG is decoded at 1/2, 1/4 or 1/8 scale
        in the DCT so that it fits; anything else larger is a row error. Each decode thread
        holds at most one such image: this, not the images' count or size, bounds a task's
        memory. None: no budget.
    max_image_bytes
        Largest encoded image, in bytes (default 64 MiB, more than any real photo). A path whose
        file is larger is a row error found before it is read (and never read past the cap
        where the size is not known); an encoded bytes row that is larger is a row error too.
        None: no cap.
    allowed_protocols
        Protocols a path column may name (default :data:`dask_clip.io.fetch.DEFAULT_PROTOCOLS`:
        ``file``/``local`` and the object stores ``s3``, ``gs``/``gcs``, ``abfs``/``az``,
        ``hf``). A path with another protocol is a row error, refused before anything is
        opened. ``http``/``https`` reach any host a URL names: add them on purpose
        (``(*DEFAULT_PROTOCOLS, "https")``, needs ``pip install 'dask-clip[http]'``).
    read_timeout
        Seconds one remote read may take before its row fails (default 60); None: no limit.
    decode_device
        ``"auto"``: when the model runs on CUDA, JPEGs are decoded there with nvJPEG (other
        formats and anything nvJPEG refuses fall back to Pillow); ``"cpu"``: always Pillow,
        the reference decoder (exact parity, slower on GPU workers).
    heads
        :class:`~dask_clip.heads.Head` objects run on the embeddings in the same pass, each
        adding one column.
    schedule
        How the input stage and the model share the machine (:mod:`dask_clip.embed.pipeline`):
        ``"auto"`` (overlap on GPUs, serial on CPUs: measured fastest on each), ``"overlap"``
        (a thread prepares the next chunk while the model runs) or ``"serial"`` (each chunk is
        prepared with every core, then embedded with every core).
    text_column
        A caption column (img2dataset's ``caption``): adds its CLIP text embedding, from the
        same model's text tower and tokenizer, in the same task. Null, empty or non-text
        captions get a null embedding and a reason.
    text_output_column, text_error_column
        The ``list<float32>`` text embedding column and its error column.
    clip_score_column
        With ``text_column``: the cosine between a row's image and caption embeddings (the
        CLIP score of LAION and DataComp), float32, null where either is missing; None: not
        added.
    phash_column
        Adds each image's perceptual hash (pHash, ``imagehash``'s bits,
        :mod:`dask_clip.dedup.phash`) as a nullable ``uint64`` column of this name, computed
        from the pixels decoded for the embedding (no second decode); null where the image
        failed (the error column says why). ``dask-clip dedup --steps phash`` then reads it
        instead of decoding again. None (default): not computed. CLI: ``--phash``.

    Examples
    --------
    >>> embedder = ImageEmbedder(model_dir="/models/clip-vit-l-14", image_column="jpg")   # doctest: +SKIP
    >>> ddf = dd.read_parquet("images/", dtype_backend="pyarrow")                          # doctest: +SKIP
    >>> dask_clip.write_parquet(embedder(ddf), "embeddings/")                             # doctest: +SKIP
    """

    remove_image_data: bool = False
    image_column: str = "image"
    output_column: str = "embedding"
    error_column: str = "embedding_error"
    on_error: str = "null"
    image_kind: str = "auto"
    height_column: str = "height"
    width_column: str = "width"
    max_image_pixels: int | None = field(default_factory=config.default("read.max-image-pixels"))
    max_decode_bytes: int | None = field(default_factory=config.default("read.max-decode-bytes"))
    max_image_bytes: int | None = field(default_factory=config.default("read.max-image-bytes"))
    allowed_protocols: Sequence[str] = field(default_factory=config.default("read.allowed-protocols", tuple))
    read_timeout: float | None = field(default_factory=config.default("read.timeout"))
    decode_device: str = "auto"
    heads: Sequence[Head] = ()
    schedule: str = "auto"
    text_column: str | None = None
    text_output_column: str = "text_embedding"
    text_error_column: str = "text_embedding_error"
    clip_score_column: str | None = "clip_score"
    phash_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.heads, tuple):  # hashable and immutable, like the rest
            object.__setattr__(self, "heads", tuple(self.heads))
        if isinstance(self.allowed_protocols, (list, set, frozenset)):
            object.__setattr__(self, "allowed_protocols", tuple(self.allowed_protocols))

    def output_columns(self) -> list[tuple[str, str]]:
        """The columns this embedder adds, as (name, kind) (kinds: :mod:`dask_clip.columns`)."""
        text: list[tuple[str, str]] = []
        if self.text_column is not None:
            text = [(self.text_output_column, LIST_FLOAT32), (self.text_error_column, STRING)]
            if self.clip_score_column is not None:
                text.append((self.clip_score_column, FLOAT32))
        return [
            (self.output_column, LIST_FLOAT32),
            (self.error_column, STRING),
            *text,
            *((head.column, head.kind) for head in self.heads),
            *([(self.phash_column, UINT64)] if self.phash_column is not None else []),
        ]

    def fingerprint(self) -> dict[str, Any]:
        """What defines this embedder's output (for resumable writers): the model, the columns
        and the heads, not how fast it runs (batch size, device, thread counts)."""
        model = self.model_fingerprint()
        out = {
            "model": model,
            "normalize": self.normalize,
            "columns": [self.image_column, *(name for name, _ in self.output_columns())],
            "remove_image_data": self.remove_image_data,
            "heads": [repr(head) for head in self.heads],
        }
        if self.text_column is not None:  # absent otherwise: earlier image-only jobs keep their fingerprint
            out["text_column"] = self.text_column
        return out

    # -- validation, on the client -------------------------------------------------------

    def validate(self, input_columns: Sequence[str] | None = None) -> None:
        """Check the configuration (and the input's columns) before anything runs.

        Raises
        ------
        ValueError, TypeError, FileNotFoundError
            With the valid choices in the message.
        """
        check_choice("on_error", self.on_error, ON_ERROR)
        check_choice("decode_device", self.decode_device, DECODE_DEVICES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("image_kind", self.image_kind, image_kinds())
        self.check_run_knobs()
        check_int("max_image_pixels", self.max_image_pixels, 1, allow_none=True)
        check_int("max_decode_bytes", self.max_decode_bytes, 1, allow_none=True)
        if self.phash_column is not None and not isinstance(self.phash_column, str):
            raise TypeError(f"phash_column must be a column name or None, not {self.phash_column!r}")
        if self.text_column is not None and self.text_column == self.image_column:
            raise ValueError(f"text_column and image_column are both {self.image_column!r}; captions need their own")
        check_int("max_image_bytes", self.max_image_bytes, 1, allow_none=True)
        check_protocols(self.allowed_protocols)
        check_timeout("read_timeout", self.read_timeout)
        for head in self.heads:
            if not isinstance(head, Head):
                raise TypeError(f"heads must be dask_clip.heads.Head objects, got {type(head).__name__}")
            head.validate()
        outputs = [name for name, _ in self.output_columns()]
        clashes = sorted({name for name in outputs if outputs.count(name) > 1})
        if clashes:
            raise ValueError(f"output columns {clashes} are named twice; give each output its own name")
        self.spec.validate()
        self._check_head_widths()
        if input_columns is not None:
            names = list(input_columns)
            if self.image_column not in names:
                raise ValueError(f"image_column={self.image_column!r} not in the columns {names}")
            if self.text_column is not None and self.text_column not in names:
                raise ValueError(f"text_column={self.text_column!r} not in the columns {names}")
            for out in outputs:
                if out in names:
                    raise ValueError(f"output column {out!r} already exists; pass another name")

    def _check_head_widths(self) -> None:
        wanted = {head.column: head.input_dim() for head in self.heads if head.input_dim() is not None}
        if not wanted:
            return
        width = self.spec.embed_dim()
        for column, dim in wanted.items():
            if width is not None and dim != width:
                raise ValueError(
                    f"head {column!r} was made for {dim}-d embeddings, but {self.spec.describe()} gives "
                    f"{width}-d ones; use the model the head was trained on"
                )

    # -- lazy: Dask ------------------------------------------------------------------------

    def __call__(self, ddf: dd.DataFrame) -> dd.DataFrame:
        """Append the embedding, error and head columns to a Dask DataFrame, lazily.

        Parameters
        ----------
        ddf
            A Dask DataFrame with ``image_column`` (pandas or cuDF partitions).

        Returns
        -------
        dask.dataframe.DataFrame
            The same rows, index and columns, plus ``output_column`` (``list<float32>``),
            ``error_column`` (string) and one column per head.

        Notes
        -----
        Nothing is computed, with one exception: an ``object``-dtype image column with
        ``image_kind="auto"`` that does not come straight from ``dd.read_parquet``. An object
        dtype does not say whether the column holds encoded bytes, paths or pixel arrays. For
        a column read from Parquet (also after a column selection, a row filter,
        ``partitions[...]``, ``repartition``), the files' schema, which ``dd.read_parquet``
        already holds, says it (``binary``: bytes; :mod:`dask_clip.io.parquet_schema`). Otherwise
        (a ``from_pandas`` frame, an ``assign``-ed column) this call reads the first rows of
        up to 4 partitions (``head``) to tell. To keep it lazy there, pass ``image_kind=`` or
        give the column a typed dtype (Arrow ``binary``, ``string`` or ``list<uint8>``).
        """
        from ..steps.base import apply

        return apply(ddf, [self.as_step()], token=TASK_NAME)  # validates, resolves image_kind, builds meta

    def as_step(self) -> Any:
        """This embedder as a :class:`~dask_clip.steps.Step`, to chain with others in one pass
        (:func:`dask_clip.steps.apply`)."""
        return ImageEmbedding(self)

    def _resolve_kind(self, ddf: dd.DataFrame) -> str:
        if self.image_kind != "auto":
            return self.image_kind
        source = detect_source(ddf._meta[self.image_column])
        if source is None:  # an object column: the Parquet schema may still say (no data read)
            source = source_for_type(parquet_column_type(ddf, self.image_column))
        if source is None:
            # Its dtype does not say. Look at a few values of the first non-empty partitions
            # (pass image_kind= to skip this).
            sample = ddf[self.image_column].head(8, npartitions=min(ddf.npartitions, 4))
            source = detect_source(sample)
        return source.kind if source is not None else "bytes"

    def _source(self, df: Any) -> ImageSource:
        if self.image_kind != "auto":
            source = get_source(self.image_kind)
        else:
            source = detect_source(df[self.image_column]) or get_source("bytes")
        return source.bounded(self.read_limits)

    @cached_property
    def read_limits(self) -> ReadLimits:
        """What reading one row may cost: ``max_image_bytes``, ``allowed_protocols``, ``read_timeout``."""
        return ReadLimits(self.max_image_bytes, check_protocols(self.allowed_protocols), self.read_timeout)

    def output_meta(self, meta: Any) -> Any:
        """The empty output frame for an input ``meta`` (what ``map_partitions`` needs)."""
        out = meta.drop(columns=[self.image_column]) if self.remove_image_data else meta.copy()
        if not self.remove_image_data:
            out[self.image_column] = self._source(meta).keep(meta[self.image_column])
        for name, kind in self.output_columns():
            out[name] = backends.empty_column(meta, kind)
        return out

    # -- eager: one partition ------------------------------------------------------------

    def embed_partition(self, df: Any) -> Any:
        """Embed one pandas or cuDF DataFrame eagerly (no Dask needed).

        Parameters
        ----------
        df
            A partition with ``image_column``.

        Returns
        -------
        DataFrame
            ``df``'s rows in order with its index and columns, plus the embedding column
            (``list<float32>``, null where the image failed), the error column and one column
            per head, of the same library as ``df``.
        """
        from ..heads.cache import get_head
        from ..models.cache import apply_torch_threads, get_model, gpu_share
        from .pipeline import embed_rows
        from .text import embed_text_rows

        started = time.perf_counter()
        source = self._source(df)
        rows = source.rows(df, self.image_column, height_column=self.height_column, width_column=self.width_column)
        model = get_model(self.spec) if len(rows) else None
        result = text = None
        if model is not None:
            if model.device.type == "cpu":
                apply_torch_threads()  # this task thread's OpenMP count, as the worker setup asked
            heads = {head.column: get_head(self.spec, head) for head in self.heads}
            with gpu_share(model.device, self.num_gpus_per_worker):
                result = embed_rows(
                    rows,
                    source,
                    model=model,
                    decoder=self._decoder(model.device, source),
                    batch_size=self.model_inference_batch_size,
                    normalize=self.normalize,
                    on_error=self.on_error,
                    index=df.index,
                    heads=heads,
                    max_pixels=self.max_image_pixels,
                    max_bytes=self.max_decode_bytes,
                    to_host=not backends.on_device(df),
                    schedule=self.schedule,
                    phash=self.phash_column is not None,
                )
                if self.text_column is not None:  # the same model's text tower, in the same task
                    text = embed_text_rows(
                        backends.string_rows(df[self.text_column]),
                        model,
                        batch_size=self.model_inference_batch_size,
                        normalize=self.normalize,
                        to_host=not backends.on_device(df),
                    )
        out = self._assemble(df, result, text)
        if self.verbose:
            failed = 0 if result is None else int((~result.valid).sum())
            self._log_partition(
                len(df), failed, time.perf_counter() - started, {} if result is None else result.seconds
            )
        return out

    def _decoder(self, device: Any, source: ImageSource) -> Any:
        from ..image.decode import PILLOW

        if self.decode_device == "auto" and device.type == "cuda" and source.kind in ("bytes", "path"):
            from ..image.gpu_decode import NvjpegDecoder

            return NvjpegDecoder(device)
        return PILLOW

    def _assemble(self, df: Any, result: Any, text: Any = None) -> Any:
        """``df`` (minus or with the image column as kept) plus the output columns."""
        out = df.drop(columns=[self.image_column]) if self.remove_image_data else df.copy(deep=False)
        if not self.remove_image_data:
            out[self.image_column] = self._source(df).keep(df[self.image_column])
        n = len(df)
        valid = np.zeros(n, dtype=bool) if result is None else result.valid
        out[self.output_column] = backends.output_column(
            df, LIST_FLOAT32, np.zeros((0, 0), np.float32) if result is None else result.embeddings, valid
        )
        out[self.error_column] = backends.output_column(df, STRING, [None] * n if result is None else result.errors)
        if self.phash_column is not None:
            hashed = np.zeros(n, dtype=bool) if result is None or result.hashed is None else result.hashed
            hashes = np.zeros(0, np.uint64) if result is None or result.hashes is None else result.hashes[hashed]
            out[self.phash_column] = backends.output_column(df, UINT64, hashes, hashed)
        if self.text_column is not None:
            self._assemble_text(df, out, result, text)
        for head in self.heads:
            values = [] if result is None else result.head_values(head.column)
            if head.kind == STRING:  # strings come for the valid rows only: spread them out
                spread: list[str | None] = [None] * n
                for row, value in zip(np.flatnonzero(valid).tolist(), values):
                    spread[row] = value
                out[head.column] = backends.output_column(df, STRING, spread)
            else:
                out[head.column] = backends.output_column(df, head.kind, values, valid)
        return out

    def _assemble_text(self, df: Any, out: Any, result: Any, text: Any) -> None:
        """Add the text embedding, its errors and the CLIP score to ``out``."""
        n = len(df)
        if text is None:  # an empty partition
            empty = np.zeros(n, dtype=bool)
            out[self.text_output_column] = backends.output_column(df, LIST_FLOAT32, np.zeros((0, 0), np.float32), empty)
            out[self.text_error_column] = backends.output_column(df, STRING, [None] * n)
            if self.clip_score_column is not None:
                out[self.clip_score_column] = backends.output_column(df, FLOAT32, np.zeros(0, np.float32), empty)
            return
        out[self.text_output_column] = backends.output_column(df, LIST_FLOAT32, text.embeddings, text.valid)
        out[self.text_error_column] = backends.output_column(df, STRING, text.errors)
        if self.clip_score_column is not None:
            out[self.clip_score_column] = backends.output_column(df, FLOAT32, *clip_scores(result, text))

    def _log_partition(self, rows: int, failed: int, seconds: float, stages: dict[str, float]) -> None:
        try:
            from distributed import get_worker

            where = get_worker().address
        except (ImportError, ValueError):
            where = "local"
        logger.info(
            "dask_clip %s: %d images (%d failed) in %.2fs, %.1f images/s (%s)",
            where,
            rows,
            failed,
            seconds,
            rows / max(seconds, 1e-9),
            ", ".join(f"{stage} {value:.2f}s" for stage, value in stages.items()),
        )


def clip_scores(result: Any, text: Any) -> tuple[Any, np.ndarray]:
    """The CLIP score of each row that has both an image and a caption embedding.

    DataComp's and LAION's definition: the cosine between the L2-normalised image and text
    embeddings (no ``100 *``, no clamp at 0 as in Hessel et al.'s CLIPScore).

    Parameters
    ----------
    result
        The image side, :class:`~dask_clip.embed.pipeline.RowsResult` (M_i valid rows).
    text
        The text side, :class:`~dask_clip.embed.text.TextResult` (M_t valid rows).

    Returns
    -------
    (torch.Tensor, numpy.ndarray)
        float32 (K,) scores of the K rows with both, in row order, and bool (N,) marking them.
    """
    import torch

    both = result.valid & text.valid
    image_rank = np.cumsum(result.valid) - 1  # row -> its place among the valid image rows
    text_rank = np.cumsum(text.valid) - 1
    rows = np.flatnonzero(both)
    image = torch.nn.functional.normalize(result.embeddings, dim=-1)
    at = image.device
    image = image[torch.as_tensor(image_rank[rows], device=at)]
    caption = text.unit.to(at)[torch.as_tensor(text_rank[rows], device=at)]
    return (image * caption).sum(dim=1), both


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
