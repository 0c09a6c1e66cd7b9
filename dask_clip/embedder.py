"""ImageEmbedder: append CLIP image embeddings to a Dask (or pandas) DataFrame."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from . import columns
from .decode import DEFAULT_MAX_IMAGE_PIXELS, decode_all
from .errors import ImageDecodeError
from .infer import encode_images
from .models import apply_torch_threads, get_model
from .spec import ModelSpec

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["ImageEmbedder"]

logger = logging.getLogger("dask_clip")
ON_ERROR = ("null", "raise")
DECODE_DEVICES = ("auto", "cpu")
# Rows decoded ahead of the model at once: bounds a partition's decoded pixels in memory.
_MIN_ROWS_PER_CHUNK = 256


def _as_tensor(pixels: object) -> torch.Tensor:
    """uint8 (H, W, 3) pixels as a CPU tensor without copying where the source allows."""
    if isinstance(pixels, torch.Tensor):
        return pixels
    array = np.asarray(pixels)
    if not array.flags.writeable:  # torch refuses to alias read-only memory
        array = array.copy()
    return torch.from_numpy(array)


@dataclass(frozen=True)
class ImageEmbedder:
    """Append CLIP image embeddings to a DataFrame, lazily on Dask or eagerly on one partition.

    Holds configuration only; each worker process loads the model once, on first use.

    Parameters
    ----------
    model, pretrained, model_dir, precision, device
        What to load; see :class:`~dask_clip.spec.ModelSpec`. ``pretrained=None`` asks for
        seeded random weights.
    normalize
        L2-normalise embeddings (unit length).
    model_inference_batch_size
        Images per forward pass (NeMo Curator's name). Halved automatically on GPU OOM.
    num_gpus_per_worker
        GPU share of one task (NeMo Curator's name): ``local_cluster`` runs
        ``round(1 / num_gpus_per_worker)`` task threads per GPU worker, sharing its one model.
    verbose
        Log per-partition images/s on the workers (logger ``"dask_clip"``).
    remove_image_data
        Drop the image column from the output.
    image_column, output_column, error_column
        Input image column; output ``list<float32>`` embedding column; output error column
        (a short reason for rows without an embedding, else null).
    on_error
        ``"null"``: a bad image gives a null embedding and a reason; ``"raise"``: raise
        :class:`~dask_clip.errors.ImageDecodeError` naming the row.
    image_kind
        ``"auto"`` (from the column's dtype or values), ``"bytes"`` (encoded images),
        ``"path"`` (local paths or fsspec URLs) or ``"pixels"`` (uint8 (H, W, 3) arrays, or
        a flat Arrow ``list<uint8>`` with ``height_column``/``width_column``).
    height_column, width_column
        Shape columns for flat ``list<uint8>`` pixel columns.
    max_image_pixels
        Images with more pixels are refused before decoding (decompression bombs).
    decode_device
        ``"auto"``: when the model runs on CUDA, JPEGs are decoded there with nvJPEG (other
        formats and anything nvJPEG refuses fall back to Pillow); ``"cpu"``: always Pillow,
        the reference decoder (exact parity, slower on GPU workers).

    Examples
    --------
    >>> embedder = ImageEmbedder(model_dir="/models/clip-vit-l-14")   # doctest: +SKIP
    >>> ddf = dd.read_parquet("images/", dtype_backend="pyarrow")      # doctest: +SKIP
    >>> embedder(ddf).to_parquet("embeddings/")                          # doctest: +SKIP
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    model_dir: str | None = None
    precision: str = "auto"
    device: str = "auto"
    normalize: bool = True
    model_inference_batch_size: int = 32
    num_gpus_per_worker: float = 0.25
    verbose: bool = False
    remove_image_data: bool = False
    image_column: str = "image"
    output_column: str = "embedding"
    error_column: str = "embedding_error"
    on_error: str = "null"
    image_kind: str = "auto"
    height_column: str = "height"
    width_column: str = "width"
    max_image_pixels: int | None = field(default=DEFAULT_MAX_IMAGE_PIXELS)
    decode_device: str = "auto"

    @property
    def spec(self) -> ModelSpec:
        """The model part of the configuration: what workers key their cache by."""
        model_dir = None if self.model_dir is None else str(self.model_dir)
        return ModelSpec(self.model, self.pretrained, model_dir, self.precision, self.device)

    # -- validation, on the client -------------------------------------------------------

    def validate(self, input_columns: object | None = None) -> None:
        """Check the configuration (and the input's columns) before anything runs.

        Raises
        ------
        ValueError, TypeError, FileNotFoundError
            With the valid choices in the message.
        """
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r}; choose one of {ON_ERROR}")
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device={self.decode_device!r}; choose one of {DECODE_DEVICES}")
        if self.image_kind not in columns.IMAGE_KINDS:
            raise ValueError(f"image_kind={self.image_kind!r}; choose one of {columns.IMAGE_KINDS}")
        if not isinstance(self.model_inference_batch_size, int) or self.model_inference_batch_size < 1:
            raise ValueError(
                f"model_inference_batch_size must be a positive int, got {self.model_inference_batch_size!r}"
            )
        if not 0 < float(self.num_gpus_per_worker) <= 1:
            raise ValueError(f"num_gpus_per_worker must be in (0, 1], got {self.num_gpus_per_worker!r}")
        if self.output_column == self.error_column:
            raise ValueError("output_column and error_column must differ")
        self.spec.validate()
        if input_columns is not None:
            names = list(input_columns)
            if self.image_column not in names:
                raise ValueError(f"image_column={self.image_column!r} not in the columns {names}")
            for out in (self.output_column, self.error_column):
                if out in names:
                    raise ValueError(f"output column {out!r} already exists; pass another name")

    # -- lazy: Dask ------------------------------------------------------------------------

    def __call__(self, ddf: dd.DataFrame) -> dd.DataFrame:
        """Append the embedding and error columns to a Dask DataFrame, lazily.

        Parameters
        ----------
        ddf
            A Dask DataFrame with ``image_column``.

        Returns
        -------
        dask.dataframe.DataFrame
            The same rows, index and columns, plus ``output_column`` (``list<float32>``) and
            ``error_column`` (string). Nothing is computed.
        """
        self.validate(ddf.columns)
        resolved = replace(self, image_kind=self._resolve_kind(ddf))
        meta = resolved.output_meta(ddf._meta)
        return ddf.map_partitions(resolved.embed_partition, meta=meta)

    def _resolve_kind(self, ddf: dd.DataFrame) -> str:
        if self.image_kind != "auto":
            return self.image_kind
        kind = columns.detect_image_kind(ddf._meta[self.image_column])
        if kind is None:
            # An object column: its dtype does not say. Look at a few values of the first
            # non-empty partitions (pass image_kind= to skip this).
            sample = ddf[self.image_column].head(8, npartitions=min(ddf.npartitions, 4))
            kind = columns.detect_image_kind(sample)
        return kind or "bytes"

    def output_meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        """The empty output frame for an input ``meta`` (what ``map_partitions`` needs)."""
        if columns.is_cudf(meta):
            from . import _cudf

            return _cudf.output_meta(
                meta, self.image_column, self.output_column, self.error_column, self.remove_image_data
            )
        out = meta.drop(columns=[self.image_column]) if self.remove_image_data else meta.copy()
        if not self.remove_image_data and self.image_kind == "bytes" and meta[self.image_column].dtype == object:
            out[self.image_column] = pd.Series([], dtype=columns.BINARY_DTYPE, index=meta.index[:0])
        out[self.output_column] = pd.Series([], dtype=columns.EMBEDDING_DTYPE, index=meta.index[:0])
        out[self.error_column] = pd.Series([], dtype=columns.ERROR_DTYPE, index=meta.index[:0])
        return out

    # -- eager: one partition ------------------------------------------------------------

    def embed_partition(self, df: pd.DataFrame) -> pd.DataFrame:
        """Embed one pandas DataFrame eagerly (no Dask needed).

        Parameters
        ----------
        df
            A partition with ``image_column``.

        Returns
        -------
        pandas.DataFrame
            ``df``'s rows in order with its index and columns, plus the embedding column
            (``list<float32>``, null where the image failed) and the error column.
        """
        kind = self.image_kind
        if kind == "auto":
            kind = columns.detect_image_kind(df[self.image_column]) or "bytes"
        started = time.perf_counter()
        rows = columns.image_rows(df, self.image_column, kind, self.height_column, self.width_column)
        on_gpu_frame = columns.is_cudf(df)
        # cuDF partitions keep embeddings on the GPU: the column is built from the tensor.
        embeddings, valid, errors = self._embed_rows(rows, kind, df.index, keep_on_device=on_gpu_frame)
        out = df.drop(columns=[self.image_column]) if self.remove_image_data else df.copy(deep=False)
        if not self.remove_image_data and kind == "bytes" and df[self.image_column].dtype == object:
            out[self.image_column] = columns.as_binary(df[self.image_column])
        if on_gpu_frame:
            from . import _cudf

            out[self.output_column] = _cudf.embedding_series(embeddings, valid, df.index)
            out[self.error_column] = _cudf.error_series(errors, df.index)
        else:
            out[self.output_column] = columns.embedding_array(embeddings, valid)
            out[self.error_column] = columns.error_array(errors)
        if self.verbose:
            self._log_partition(len(df), int((~valid).sum()), time.perf_counter() - started)
        return out

    def _embed_rows(
        self, rows: list[object], kind: str, index: pd.Index, keep_on_device: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Decode and embed rows; ``keep_on_device`` returns the (M, D) embeddings as a torch
        tensor on the model's device instead of a NumPy array."""
        n = len(rows)
        errors: list[str | None] = [None] * n
        valid = np.zeros(n, dtype=bool)
        if n == 0:
            return np.zeros((0, 0), np.float32), valid, errors
        loaded = get_model(self.spec)
        if loaded.device.type == "cpu":
            apply_torch_threads()  # this task thread's OpenMP count, as the worker setup asked
        batch = self.model_inference_batch_size
        chunk = batch * max(1, _MIN_ROWS_PER_CHUNK // batch)
        parts: list[torch.Tensor] = []
        on_device = self.decode_device == "auto" and loaded.device.type == "cuda" and kind in ("bytes", "path")

        def decode(start: int) -> list:
            if on_device:
                from .gpu_decode import decode_all as decode_on_device

                return decode_on_device(
                    rows[start : start + chunk], kind, device=loaded.device, max_pixels=self.max_image_pixels
                )
            return decode_all(rows[start : start + chunk], kind, max_pixels=self.max_image_pixels)

        # Decode the next chunk in a thread while the model runs (Pillow releases the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="dask-clip-decode") as pool:
            pending = pool.submit(decode, 0)
            for start in range(0, n, chunk):
                decoded = pending.result()
                if start + chunk < n:
                    pending = pool.submit(decode, start + chunk)
                images = []
                for offset, (pixels, reason) in enumerate(decoded):
                    if pixels is None:
                        if self.on_error == "raise":
                            raise ImageDecodeError(index[start + offset], reason or "unknown")
                        errors[start + offset] = reason
                    else:
                        valid[start + offset] = True
                        images.append(_as_tensor(pixels))
                if images:
                    embedded = encode_images(loaded, images, batch_size=batch, normalize=self.normalize)
                    parts.append(embedded if keep_on_device else embedded.cpu())
        if keep_on_device:
            empty = torch.zeros((0, loaded.embed_dim), dtype=torch.float32, device=loaded.device)
            return (torch.cat(parts) if parts else empty), valid, errors  # type: ignore[return-value]
        embeddings = torch.cat(parts).numpy() if parts else np.zeros((0, loaded.embed_dim), np.float32)
        return embeddings, valid, errors

    def _log_partition(self, rows: int, failed: int, seconds: float) -> None:
        try:
            from distributed import get_worker

            where = get_worker().address
        except (ImportError, ValueError):
            where = "local"
        if not logger.handlers and not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO)
        logger.setLevel(logging.INFO)
        logger.info(
            "dask_clip %s: %d images (%d failed) in %.2fs, %.1f images/s",
            where,
            rows,
            failed,
            seconds,
            rows / max(seconds, 1e-9),
        )
