"""The cuDF side of the dataframe boundary: buffer hand-offs between cuDF, Arrow and torch.

cuDF is imported lazily, only when a partition is a ``cudf.DataFrame`` (detected by its
type's module name, so importing dask_clip never imports cuDF or touches a GPU). Everything
else in the package is shared with the pandas path.

- **Image bytes** arrive from Parquet as cuDF *strings* (cuDF has no binary dtype). The
  decoders need host bytes (torchvision takes CPU byte tensors), so ``Series.to_arrow()``
  copies the offsets and chars buffers device→host once, and each row becomes a
  ``memoryview`` into that one host buffer (:func:`byte_rows`, the same code as for Arrow).
- **Decoded pixels** (``list<uint8>``): the leaves go to torch through DLPack (CuPy
  ``Series.values`` → ``torch.from_dlpack``) with no copy; rows are views shaped (H, W, C).
- **Embeddings**: the (N, D) float32 CUDA tensor becomes a ``list<float32>`` column without a
  copy (``pylibcudf.Column.from_cuda_array_interface``, cuDF ≥ 25.06, then
  ``cudf.Series.from_pylibcudf``). Failed rows hold zeros under a null mask, so every row has
  D values and ``s.list.leaves.values.reshape(n, d)`` reads the column back as (N, D).

Only the device-agnostic helpers (:func:`byte_rows`, :func:`pack_validity`,
:func:`dense_rows`, :func:`looks_like_image`) run without cuDF; they are tested on CPU with
Arrow and NumPy buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ._backend import is_cudf

__all__ = [
    "byte_rows",
    "dense_rows",
    "detect_image_kind",
    "embedding_series",
    "error_series",
    "image_rows",
    "is_cudf",
    "looks_like_image",
    "output_meta",
    "pack_validity",
    "rows_from_buffers",
]

_INSTALL_HINT = 'cuDF partitions need cuDF >= 25.06: pip install "dask-clip[cudf]"'
# libcudf pads null masks to 64 bytes (cudf::bitmask_allocation_size_bytes).
_MASK_PADDING = 64
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)


def _import_cudf() -> tuple[Any, Any]:
    try:
        import cudf
        import pylibcudf as plc
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return cudf, plc


# -- device-agnostic helpers (tested on CPU) ---------------------------------------------


def rows_from_buffers(
    offsets: np.ndarray, data: memoryview | bytes | np.ndarray, valid: np.ndarray | None = None
) -> list[memoryview | None]:
    """Per-row byte views into one buffer, Arrow/cuDF string layout.

    Parameters
    ----------
    offsets
        int32 or int64 (N + 1,): row i is ``data[offsets[i]:offsets[i + 1]]``.
    data
        The chars buffer (host memory).
    valid
        bool (N,), False for null rows; None when there are no nulls.

    Returns
    -------
    list of memoryview or None
        N zero-copy views (None for nulls).
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    bounds = np.asarray(offsets, dtype=np.int64).tolist()  # Python ints: fast slicing
    if valid is None:
        return [view[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    flags = np.asarray(valid, dtype=bool).tolist()
    return [view[bounds[i] : bounds[i + 1]] if flags[i] else None for i in range(len(bounds) - 1)]


def byte_rows(array: pa.Array | pa.ChunkedArray) -> list[memoryview | None]:
    """Zero-copy per-row views of an Arrow binary or string array (what ``to_arrow()`` gives).

    Parameters
    ----------
    array
        ``binary``, ``large_binary``, ``string`` or ``large_string`` (other binary-like types
        are cast first); sliced arrays are handled.

    Returns
    -------
    list of memoryview or None
        One per row; None for nulls.
    """
    if isinstance(array, pa.ChunkedArray):
        return [row for chunk in array.chunks for row in byte_rows(chunk)]
    if not (
        pa.types.is_binary(array.type)
        or pa.types.is_string(array.type)
        or pa.types.is_large_binary(array.type)
        or pa.types.is_large_string(array.type)
    ):
        array = array.cast(pa.binary())  # binary_view/string_view: one copy
    width = np.int64 if pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type) else np.int32
    validity, offsets_buf, data_buf = array.buffers()[:3]
    offsets = np.frombuffer(
        offsets_buf, dtype=width, count=len(array) + 1, offset=array.offset * np.dtype(width).itemsize
    )
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    valid = None if validity is None or array.null_count == 0 else array.is_valid().to_numpy(zero_copy_only=False)
    return rows_from_buffers(offsets, data, valid)


def looks_like_image(head: bytes | memoryview | None) -> bool:
    """Whether a value starts like an encoded image (or is not UTF-8 text, so not a path).

    Parameters
    ----------
    head
        The first bytes of one value.
    """
    if head is None:
        return False
    head = bytes(head[:16])
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp":
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(head) - 3  # a cut multi-byte character at the end is still text
    return False


def pack_validity(valid: np.ndarray) -> np.ndarray:
    """A validity bitmask as Arrow and libcudf lay it out: bit i (LSB first) set for valid rows.

    Parameters
    ----------
    valid
        bool (N,).

    Returns
    -------
    numpy.ndarray
        uint8 (ceil(N / 8) rounded up to a multiple of 64,) — libcudf's mask padding.
    """
    bits = np.packbits(np.asarray(valid, dtype=bool), bitorder="little")
    size = max(_MASK_PADDING, -(-len(bits) // _MASK_PADDING) * _MASK_PADDING)
    out = np.zeros(size, dtype=np.uint8)
    out[: len(bits)] = bits
    return out


def dense_rows(embeddings: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
    """The (N, D) tensor with the M embeddings in the valid rows and zeros elsewhere.

    Parameters
    ----------
    embeddings
        float32 (M, D), the successful rows in order, any device.
    valid
        bool (N,) with M True values.

    Returns
    -------
    torch.Tensor
        float32 (N, D), C-contiguous, on ``embeddings``' device; ``embeddings`` itself (no
        copy) when every row is valid.
    """
    valid = np.asarray(valid, dtype=bool)
    if int(valid.sum()) != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings for {int(valid.sum())} valid rows")
    if valid.all():
        return embeddings.contiguous()
    full = embeddings.new_zeros((len(valid), embeddings.shape[1]))
    full[torch.from_numpy(valid).to(embeddings.device)] = embeddings
    return full


# -- cuDF (needs a GPU and cuDF; thin, against cuDF's documented API) -----------------------


def detect_image_kind(series: Any) -> str | None:
    """:func:`dask_clip.columns.detect_image_kind` for a cuDF Series.

    cuDF strings hold either paths or (from Parquet ``binary``) encoded bytes: the first
    non-null value decides (an image signature, or bytes that are not UTF-8, mean bytes).
    """
    cudf, _ = _import_cudf()
    dtype = series.dtype
    if isinstance(dtype, cudf.ListDtype):
        if str(dtype.element_type) == "uint8":
            return "pixels"
        raise TypeError(f"image column of type {dtype} holds no images; expected list<uint8>")
    if not cudf.api.types.is_string_dtype(dtype):
        raise TypeError(
            f"image column of dtype {dtype} holds no images; expected strings (bytes or paths) or list<uint8>"
        )
    sample = series.dropna().head(1)
    if len(sample) == 0:
        return None
    return "bytes" if looks_like_image(byte_rows(sample.to_arrow())[0]) else "path"


def _host_column(df: Any, name: str) -> np.ndarray:
    return df[name].to_pandas().to_numpy(dtype="float64", na_value=np.nan)


def image_rows(df: Any, column: str, kind: str, height_column: str, width_column: str) -> list[object]:
    """:func:`dask_clip.columns.image_rows` for a cuDF partition.

    Returns
    -------
    list
        ``"bytes"``: memoryviews into one host copy of the chars buffer; ``"path"``: str;
        ``"pixels"``: uint8 (H, W, C) CUDA tensors viewing the column's leaves (no copy).
    """
    from .columns import _pixels_from_flat_lists, split_flat_pixels

    series = df[column]
    if kind in ("bytes", "path"):
        rows = byte_rows(series.to_arrow())  # the one device->host copy
        if kind == "path":
            return [None if v is None else bytes(v).decode("utf-8", "replace") for v in rows]
        return rows
    missing = [c for c in (height_column, width_column) if c not in df.columns]
    if missing:
        raise ValueError(f"a list<uint8> pixel column needs height/width columns; missing {missing}")
    heights, widths = _host_column(df, height_column), _host_column(df, width_column)
    lengths = series.list.len().to_pandas().to_numpy(dtype="float64", na_value=np.nan)
    valid = ~np.isnan(lengths)
    counts = np.where(valid, lengths, 0).astype(np.int64)
    leaves = series.list.leaves
    if len(leaves) == int(counts.sum()) and str(leaves.dtype) == "uint8" and not leaves.has_nulls:
        flat = torch.from_dlpack(leaves.values)  # CuPy -> torch through DLPack: no copy
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return split_flat_pixels(flat, offsets, valid, heights, widths)
    # A sliced column (leaves not starting at row 0) or null rows holding values: take the
    # documented, copying way through Arrow and the CPU code.
    return _pixels_from_flat_lists(series.to_arrow(), heights, widths)


def embedding_series(embeddings: object, valid: np.ndarray, index: Any) -> Any:
    """The ``list<float32>`` embedding column of a cuDF partition, built without a copy.

    Parameters
    ----------
    embeddings
        float32 (M, D) torch tensor (CUDA for no copy) or NumPy array: the successful rows.
    valid
        bool (N,), True where a row has an embedding.
    index
        The partition's index.

    Returns
    -------
    cudf.Series
        Length N, dtype ``list<float32>``, null where ``valid`` is False (those rows hold D
        zeros under the mask).
    """
    cudf, plc = _import_cudf()
    valid = np.asarray(valid, dtype=bool)
    emb = torch.as_tensor(embeddings, dtype=torch.float32)
    if len(valid) == 0:
        return cudf.Series([], dtype=cudf.ListDtype("float32"), index=index)
    full = dense_rows(emb.reshape(int(valid.sum()), -1), valid)
    if not full.is_cuda:
        full = full.cuda()
    full = full.contiguous()
    # libcudf works on its own stream: finish torch's writes first.
    torch.cuda.current_stream(full.device).synchronize()
    if not hasattr(plc.Column, "from_cuda_array_interface"):
        raise ImportError(_INSTALL_HINT)
    column = plc.Column.from_cuda_array_interface(full)  # 2-D (N, D) -> LIST<FLOAT32>, no copy
    if not valid.all():
        mask = torch.from_numpy(pack_validity(valid)).to(full.device)
        column = plc.Column(
            column.type(),
            column.size(),
            column.data(),
            plc.gpumemoryview(mask),
            int((~valid).sum()),
            column.offset(),
            column.children(),
        )
    series = cudf.Series.from_pylibcudf(column)
    series.index = index
    return series


def error_series(errors: Sequence[str | None], index: Any) -> Any:
    """The error column of a cuDF partition: string, null where the row succeeded."""
    cudf, _ = _import_cudf()
    return cudf.Series(list(errors), dtype="str", index=index)


def output_meta(meta: Any, image_column: str, output_column: str, error_column: str, remove_image_data: bool) -> Any:
    """The empty cuDF output frame for a cuDF ``meta`` (``cudf.ListDtype("float32")``)."""
    cudf, _ = _import_cudf()
    out = meta.drop(columns=[image_column]) if remove_image_data else meta.copy()
    out[output_column] = cudf.Series([], dtype=cudf.ListDtype("float32"), index=meta.index[:0])
    out[error_column] = cudf.Series([], dtype="str", index=meta.index[:0])
    return out
