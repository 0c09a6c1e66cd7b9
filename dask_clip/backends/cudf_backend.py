"""The cuDF implementations of :mod:`dask_clip.backends` (registered on first use of a cuDF object).

Buffer hand-offs between cuDF, Arrow and torch, thin and against cuDF's documented API
(cuDF >= 25.06); the layout logic they share with pandas is in :mod:`.arrow` and tested on CPU.
**No GPU has been available to this project yet: this module has not run.**

- **Image bytes** arrive from Parquet as cuDF *strings* (cuDF has no binary dtype). The
  decoders need host bytes (torchvision takes CPU byte tensors), so ``Series.to_arrow()``
  copies the offsets and chars buffers device→host once, and each row becomes a ``memoryview``
  into that one host buffer (:func:`.arrow.byte_rows`, the same code as for pandas).
- **Decoded pixels** (``list<uint8>``): the leaves go to torch through DLPack (CuPy
  ``Series.values`` → ``torch.from_dlpack``) with no copy.
- **Embeddings**: the (M, D) float32 CUDA tensor of the valid rows becomes the values of a
  ``list<float32>`` column without a copy (``pylibcudf.Column.from_cuda_array_interface``, a
  LIST ``pylibcudf.Column`` over it and its offsets, then ``cudf.Series.from_pylibcudf``).
  Failed rows are empty nulls (no value under them), so ``s[s.notna()].list.leaves.values
  .reshape(m, d)`` reads the valid rows back as (M, D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cudf
import numpy as np
import pyarrow as pa
import pylibcudf as plc
import torch

from . import arrow
from . import dispatch as be
from .kinds import FLOAT32, LIST_FLOAT32, STRING, UINT64

_INSTALL_HINT = 'cuDF partitions need cuDF >= 25.06: pip install "dask-clip[cudf-cu12]" (or cudf-cu13)'
_FRAME = (cudf.DataFrame,)
_SERIES = (cudf.Series,)
_ANY = (cudf.DataFrame, cudf.Series, cudf.Index)


def _cupy() -> Any:
    import cupy

    return cupy


def _to_cupy(values: Any) -> Any:
    """torch tensor / NumPy / CuPy -> CuPy (no copy for CUDA tensors: CUDA array interface)."""
    cp = _cupy()
    if isinstance(values, torch.Tensor):
        values = values.detach()
        return cp.asarray(values) if values.is_cuda else cp.asarray(values.numpy())
    return cp.asarray(values)


# -- image columns in ----------------------------------------------------------------------------


@be.column_type.register(_SERIES)
def column_type(series: Any) -> pa.DataType | None:
    dtype = series.dtype
    if isinstance(dtype, cudf.ListDtype):
        element = dtype.element_type
        if isinstance(element, cudf.ListDtype) or str(element) in ("str", "object", "string"):
            return pa.list_(pa.string())  # nested or string lists: holds no images
        return pa.list_(pa.from_numpy_dtype(np.dtype(str(element))))
    if cudf.api.types.is_string_dtype(dtype):
        return pa.string()
    try:
        return pa.from_numpy_dtype(np.dtype(str(dtype)))
    except (TypeError, NotImplementedError, pa.ArrowNotImplementedError):
        return pa.null()


@be.binary_as_string.register(_ANY)
def binary_as_string(obj: Any) -> bool:
    return True  # cuDF reads Parquet binary columns as strings


@be.on_device.register(_ANY)
def on_device(obj: Any) -> bool:
    return True  # embeddings stay on the GPU: the column is built on the tensor


@be.sample_values.register(_SERIES)
def sample_values(series: Any, n: int = 1) -> list[object]:
    """Up to ``n`` values; strings that start like an image (or are not UTF-8) come back as bytes."""
    head = series.dropna().head(n)
    if cudf.api.types.is_string_dtype(head.dtype):
        rows = arrow.byte_rows(head.to_arrow())
        return [bytes(r) if arrow.looks_like_image(r) else bytes(r).decode("utf-8", "replace") for r in rows if r]
    return head.to_arrow().to_pylist()


@be.byte_rows.register(_SERIES)
def byte_rows(series: Any) -> list[Any]:
    return arrow.byte_rows(series.to_arrow())  # the one device->host copy


@be.string_rows.register(_SERIES)
def string_rows(series: Any) -> list[str | None]:
    return series.to_arrow().to_pylist()


@be.object_rows.register(_SERIES)
def object_rows(series: Any) -> list[object]:
    raise TypeError(f"cuDF columns of dtype {series.dtype} hold no per-row Python objects")


@be.flat_uint8_rows.register(_SERIES)
def flat_uint8_rows(series: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """uint8 leaves as a CUDA tensor view (no copy), with host offsets and validity."""
    lengths = series.list.len().to_pandas().to_numpy(dtype="float64", na_value=np.nan)
    valid = ~np.isnan(lengths)
    counts = np.where(valid, lengths, 0).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    leaves = series.list.leaves
    if len(leaves) == int(counts.sum()) and str(leaves.dtype) == "uint8" and not leaves.has_nulls:
        return torch.from_dlpack(leaves.values), offsets, valid  # CuPy -> torch: no copy
    # A sliced column (leaves not starting at row 0) or null rows holding values: take the
    # documented, copying way through Arrow.
    return arrow.flat_list_buffers(series.to_arrow())


@be.host_floats.register(_SERIES)
def host_floats(series: Any) -> np.ndarray:
    return series.to_pandas().to_numpy(dtype="float64", na_value=np.nan)


@be.as_binary.register(_SERIES)
def as_binary(series: Any) -> Any:
    return series  # cuDF has no binary dtype: its bytes stay strings


# -- columns out ---------------------------------------------------------------------------------


def _list_float32_series(values: Any, valid: np.ndarray, index: Any) -> Any:
    """``list<float32>`` built on the (M, D) CUDA tensor of the valid rows without a copy.

    Null rows are empty (their offsets span no value: :func:`.arrow.list_offsets`, the layout
    of the pandas column too). Zeros under a null mask would be non-empty nulls, which
    ``.list.leaves`` and other libcudf list operations return as if they were data.
    """
    if len(valid) == 0:
        return cudf.Series([], dtype=cudf.ListDtype("float32"), index=index)
    if not hasattr(plc.Column, "from_cuda_array_interface"):
        raise ImportError(_INSTALL_HINT)
    m = int(valid.sum())
    rows = torch.as_tensor(values, dtype=torch.float32)
    rows = rows.reshape(m, rows.shape[1] if rows.ndim == 2 else 1)  # (M,): one value per row
    rows = (rows if rows.is_cuda else rows.cuda()).contiguous()
    offsets = torch.from_numpy(arrow.list_offsets(valid, rows.shape[1])).to(rows.device)
    # libcudf works on its own stream: finish torch's writes first.
    torch.cuda.current_stream(rows.device).synchronize()
    child = plc.Column.from_cuda_array_interface(rows.reshape(-1))  # 1-D float32, no copy
    mask, nulls = None, int((~valid).sum())
    if nulls:
        mask = plc.gpumemoryview(torch.from_numpy(arrow.pack_validity(valid)).to(rows.device))
    column = plc.Column(
        plc.DataType(plc.TypeId.LIST),
        len(valid),
        None,
        mask,
        nulls,
        0,
        [plc.Column.from_cuda_array_interface(offsets), child],
    )
    series = cudf.Series.from_pylibcudf(column)
    series.index = index
    return series


@be.output_column.register(_FRAME)
def output_column(like: Any, kind: str, values: Any, valid: np.ndarray | None = None) -> Any:
    n = len(like)
    if kind == STRING:
        return cudf.Series(list(values), dtype="str", index=like.index)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if kind == LIST_FLOAT32:
        return _list_float32_series(values, valid, like.index)
    if kind == FLOAT32:
        full = cudf.Series(_to_cupy(arrow.dense_matrix(values, valid)[:, 0]))
        full = full.astype("float32").where(cudf.Series(valid))
        full.index = like.index
        return full
    if kind == UINT64:  # host values (hashes are computed on the host), nulls where not valid
        host = np.zeros(n, dtype=np.uint64)
        host[valid] = np.asarray(values, dtype=np.uint64).reshape(-1)
        hashes = cudf.Series(host, dtype="uint64").where(cudf.Series(valid))
        hashes.index = like.index
        return hashes
    raise ValueError(f"unknown column kind {kind!r}")


@be.empty_column.register(_FRAME)
def empty_column(meta: Any, kind: str) -> Any:
    dtype = {LIST_FLOAT32: cudf.ListDtype("float32"), FLOAT32: "float32", STRING: "str", UINT64: "uint64"}[kind]
    return cudf.Series([], dtype=dtype, index=meta.index[:0])


@be.embedding_matrix.register(_SERIES)
def embedding_matrix(series: Any, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDF ``list<float32>`` Series -> (float32 (m, d), bool (n,)) on ``device`` (default CUDA).

    Zero-copy for the common case (no nulls, not sliced): ``s.list.leaves.values`` is a CuPy
    view of the leaves and ``torch.from_dlpack`` a torch view of that.
    """
    dev = torch.device(device or "cuda")
    n = len(series)
    if n == 0:
        return torch.empty((0, 0), dtype=torch.float32, device=dev), torch.zeros(0, dtype=torch.bool, device=dev)
    lengths = series.list.len().fillna(0)
    nonnull = lengths > 0
    if not bool(nonnull.all()):
        series = series[nonnull]  # gathers the usable rows (a copy)
        lengths = lengths[nonnull]
    m = len(series)
    d = int(lengths.max()) if m else 0
    if m and int(lengths.min()) != d:
        raise ValueError(f"embeddings of different lengths: {int(lengths.min())}..{d}")
    leaves = series.list.leaves
    if len(leaves) != m * d:  # a sliced column exposes its parent's leaves: compact it first
        leaves = series.copy(deep=True).list.leaves
    if leaves.dtype != np.float32:
        leaves = leaves.astype("float32")
    # .values is a zero-copy CuPy view; with null elements it would raise, so copy with NaN
    flat = leaves.to_cupy(na_value=np.nan) if leaves.has_nulls else leaves.values
    x = torch.from_dlpack(flat.reshape(m, d)).to(dev)
    valid = torch.from_dlpack(_to_cupy(nonnull.values)).to(dev)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        x = x[finite]
        valid[valid.clone()] = finite
    return x, valid


# -- frames, for the dedup steps -----------------------------------------------------------------


@be.new_column.register(_ANY)
def new_column(like: Any, values: Any, dtype: Any = None) -> Any:
    out = cudf.Series(_to_cupy(values))
    return out if dtype is None else out.astype(dtype)


@be.new_frame.register(_ANY)
def new_frame(like: Any, columns: dict[str, Any], index: Any = None) -> Any:
    data = {
        k: (v.reset_index(drop=True) if isinstance(v, cudf.Series) else new_column(like, v)) for k, v in columns.items()
    }
    out = cudf.DataFrame(data)
    if index is not None:
        out.index = index
    return out


@be.with_columns.register(_FRAME)
def with_columns(df: Any, columns: dict[str, Any]) -> Any:
    out = df.copy(deep=False)
    for name, values in columns.items():
        v = values.reset_index(drop=True) if isinstance(values, cudf.Series) else new_column(df, values)
        v.index = df.index
        out[name] = v
    return out


@be.take.register(_SERIES)
def take(series: Any, positions: Any) -> Any:
    positions = np.asarray(positions) if isinstance(positions, list) else positions
    return series.iloc[_to_cupy(positions)].reset_index(drop=True)


@be.take_rows.register(_FRAME)
def take_rows(df: Any, positions: Any) -> Any:
    """The rows of ``df`` at integer ``positions`` (a gather on the device), with their index labels."""
    positions = np.asarray(positions) if isinstance(positions, list) else positions
    return df.iloc[_to_cupy(positions)]


@be.numeric_tensor.register(_SERIES)
def numeric_tensor(series: Any, device: Any = None) -> torch.Tensor:
    return torch.from_dlpack(series.values).to(device)  # a zero-copy view, then moved if asked


@be.nullable.register(_SERIES)
def nullable(series: Any) -> Any:
    return series  # cuDF columns can always hold nulls


@be.local_positions.register((cudf.Index,))
def local_positions(index: Any, mask: int) -> Any:
    return cudf.Index(index.values & mask)


@be.arange_index.register(_ANY)
def arange_index(like: Any, n: int) -> Any:
    return cudf.RangeIndex(n)


@be.content_hashes.register(_SERIES)
def content_hashes(series: Any) -> Any:
    """SHA-256 hex digests of a cuDF string Series (cuDF reads Parquet binary as string)."""
    out = series.hash_values(method="sha256")
    return out.where(series.notna()).reset_index(drop=True)


@be.pack_rows.register(_ANY)
def pack_rows(like: Any, x: torch.Tensor, original: Any, positions: Sequence[int]) -> Any:
    """cuDF has no binary dtype: the shuffle carries the original list rows instead."""
    return take(original, positions)


@be.pack_floats.register(_ANY)
def pack_floats(like: Any, x: Any) -> Any:
    """Float32 ``(m, w)`` rows as a ``list<float32>`` column (cuDF has no binary dtype; lists
    shuffle on cuDF), built on the CUDA tensor without a copy."""
    rows = torch.as_tensor(x, dtype=torch.float32)
    return _list_float32_series(rows, np.ones(rows.shape[0], dtype=bool), cudf.RangeIndex(rows.shape[0]))
