"""The pandas/Arrow implementations of :mod:`dask_clip.backends` (registered on import).

Columns are read through Arrow's public protocol (``series.array.__arrow_array__()``), never a
private attribute; image bytes become zero-copy views of the Arrow buffer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import arrow
from . import dispatch as be
from .kinds import FLOAT32, LIST_FLOAT32, PANDAS_DTYPES, STRING, UINT64

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is made: the client side of a job (meta, column types, the
# job plan) never needs it, and importing it costs seconds.

_FRAME = (pd.DataFrame,)
_SERIES = (pd.Series,)
_ANY = (pd.DataFrame, pd.Series, pd.Index)
# StringDtype("pyarrow") survives distributed's P2P shuffle; ArrowDtype(pa.string()) comes back as object.
HASH_DTYPE = pd.StringDtype("pyarrow")


def _arrow(series: pd.Series) -> pa.ChunkedArray | None:
    """The Arrow data of an Arrow-backed column (no copy), else None."""
    if isinstance(series.dtype, pd.ArrowDtype):
        return series.array.__arrow_array__()
    return None


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


# -- image columns in ----------------------------------------------------------------------------


@be.column_type.register(_SERIES)
def column_type(series: pd.Series) -> pa.DataType | None:
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return dtype.pyarrow_dtype
    if pd.api.types.is_object_dtype(dtype):
        return None
    if pd.api.types.is_string_dtype(dtype):
        return pa.string()  # pandas' own string dtypes
    try:
        return pa.from_numpy_dtype(dtype)
    except (TypeError, NotImplementedError, pa.ArrowNotImplementedError):
        return pa.null()  # categorical, period, ...: holds nothing an image source takes


@be.binary_as_string.register(_ANY)
def binary_as_string(obj: Any) -> bool:
    return False


@be.on_device.register(_ANY)
def on_device(obj: Any) -> bool:
    return False


@be.sample_values.register(_SERIES)
def sample_values(series: pd.Series, n: int = 1) -> list[object]:
    values = []
    for value in series.tolist():
        if not _is_null(value):
            values.append(value)
            if len(values) == n:
                break
    return values


@be.byte_rows.register(_SERIES)
def byte_rows(series: pd.Series) -> list[Any]:
    array = _arrow(series)
    if array is not None and (arrow.is_binary_type(array.type) or arrow.is_string_type(array.type)):
        return arrow.byte_rows(array)  # views of the Arrow buffer, no copy
    return object_rows(series)


@be.string_rows.register(_SERIES)
def string_rows(series: pd.Series) -> list[Any]:
    array = _arrow(series)
    if array is not None:
        return array.to_pylist()
    return object_rows(series)


@be.object_rows.register(_SERIES)
def object_rows(series: pd.Series) -> list[Any]:
    return [None if _is_null(v) else v for v in series.tolist()]


@be.flat_uint8_rows.register(_SERIES)
def flat_uint8_rows(series: pd.Series) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    array = _arrow(series)
    if array is None:
        raise TypeError(f"expected an Arrow list<uint8> column, got {series.dtype}")
    return arrow.flat_list_buffers(array)


@be.host_floats.register(_SERIES)
def host_floats(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype="float64", na_value=np.nan)


@be.as_binary.register(_SERIES)
def as_binary(series: pd.Series) -> pd.Series:
    if series.dtype != object:
        return series
    values = [None if _is_null(v) else bytes(v) for v in series.tolist()]
    return pd.Series(
        pd.arrays.ArrowExtensionArray(pa.array(values, type=pa.binary())), index=series.index, name=series.name
    )


# -- columns out ---------------------------------------------------------------------------------


def _host(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch.Tensor, without importing torch
        return values.detach().cpu().numpy()
    return np.asarray(values)


@be.output_column.register(_FRAME)
def output_column(like: pd.DataFrame, kind: str, values: Any, valid: np.ndarray | None = None) -> Any:
    """A column of ``kind`` for ``like``'s rows (an ExtensionArray: assigned by position).

    ``values`` holds the valid rows only when ``valid`` is given, else one value per row.
    """
    n = len(like)
    if kind == STRING:
        return pd.arrays.ArrowExtensionArray(pa.array(list(values), type=pa.string()))
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if kind == LIST_FLOAT32:
        return pd.arrays.ArrowExtensionArray(arrow.list_float32_array(_host(values), valid))
    if kind == FLOAT32:
        full = np.zeros(n, dtype=np.float32)
        full[valid] = _host(values).astype(np.float32, copy=False).reshape(-1)
        return pd.arrays.ArrowExtensionArray(pa.array(full, type=pa.float32(), mask=~valid))
    if kind == UINT64:
        full64 = np.zeros(n, dtype=np.uint64)
        full64[valid] = np.asarray(values, dtype=np.uint64).reshape(-1)
        return pd.arrays.ArrowExtensionArray(pa.array(full64, type=pa.uint64(), mask=~valid))
    raise ValueError(f"unknown column kind {kind!r}")


@be.empty_column.register(_FRAME)
def empty_column(meta: pd.DataFrame, kind: str) -> pd.Series:
    return pd.Series([], dtype=PANDAS_DTYPES[kind], index=meta.index[:0])


@be.embedding_matrix.register(_SERIES)
def embedding_matrix(series: pd.Series, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Usable rows of an embedding column as float32 (m, d), and bool (n,) valid.

    A row is usable when it is not null, not empty and all its values are finite. Reads
    ``list``/``large_list``/``fixed_size_list`` Arrow columns, the ``large_binary`` rows of
    :func:`pack_rows`, and object columns of arrays (plain ``pd.read_parquet``).
    """
    import torch

    n = len(series)
    dev = torch.device(device or "cpu")
    if n == 0:
        return torch.empty((0, 0), dtype=torch.float32, device=dev), torch.zeros(0, dtype=torch.bool, device=dev)
    chunked = _arrow(series)
    if chunked is not None:
        arr = chunked.combine_chunks()
        if pa.types.is_large_binary(arr.type):
            x = unpack_rows(arr)
            return torch.from_numpy(x).to(dev), torch.ones(n, dtype=torch.bool, device=dev)
        if not (
            pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)
        ):
            raise TypeError(f"embedding column must hold lists of floats, not {arr.type}")
        # a null row counts as length 0; flatten() skips null rows and honours slice offsets
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        flat = arr.flatten().to_numpy(zero_copy_only=False)
    else:
        rows = [
            None if v is None or np.ndim(v) == 0 else np.asarray(v, np.float32).ravel()
            for v in series.to_numpy(dtype=object)
        ]
        lengths = np.array([0 if r is None else r.size for r in rows], np.int64)
        flat = np.concatenate([r for r in rows if r is not None and r.size] or [np.empty(0, np.float32)])
    nonnull = lengths > 0
    d = int(lengths[nonnull][0]) if nonnull.any() else 0
    if (lengths[nonnull] != d).any():
        raise ValueError(f"embeddings of different lengths: {sorted(set(lengths[nonnull].tolist()))[:5]}")
    x = np.asarray(flat, dtype=np.float32).reshape(int(nonnull.sum()), d)
    finite = np.isfinite(x).all(axis=1)
    valid = nonnull.copy()
    valid[nonnull] = finite
    if not finite.all():
        x = x[finite]
    if not x.flags.writeable:
        x = x.copy()
    return torch.from_numpy(x).to(dev), torch.from_numpy(valid).to(dev)


def unpack_rows(arr: pa.LargeBinaryArray) -> np.ndarray:
    """Inverse of :func:`pack_rows`: float32 ``(m, d)``, a writable copy of the values."""
    m = len(arr)
    if m == 0:
        return np.empty((0, 0), np.float32)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + m + 1]
    widths = np.diff(offsets)
    if (widths != widths[0]).any() or widths[0] % 4:
        raise ValueError("packed embeddings of different lengths")
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    x = data.view(np.float32).reshape(m, int(widths[0]) // 4)
    return x if x.flags.writeable else x.copy()


# -- frames, for the dedup steps -----------------------------------------------------------------


@be.new_column.register(_ANY)
def new_column(like: Any, values: Any, dtype: Any = None) -> np.ndarray:
    arr = _host(values)
    return arr if dtype is None else arr.astype(dtype, copy=False)


@be.new_frame.register(_ANY)
def new_frame(like: Any, columns: dict[str, Any], index: Any = None) -> pd.DataFrame:
    return pd.DataFrame(
        {k: v.reset_index(drop=True) if isinstance(v, pd.Series) else v for k, v in columns.items()},
        index=index,
    )


@be.with_columns.register(_FRAME)
def with_columns(df: pd.DataFrame, columns: dict[str, Any]) -> pd.DataFrame:
    out = df.copy(deep=False)
    for name, values in columns.items():
        out[name] = values.set_axis(df.index) if isinstance(values, pd.Series) else pd.Series(values, index=df.index)
    return out


@be.take.register(_SERIES)
def take(series: pd.Series, positions: Any) -> pd.Series:
    return series.iloc[_host(positions)].reset_index(drop=True)


@be.take_rows.register(_FRAME)
def take_rows(df: pd.DataFrame, positions: Any) -> pd.DataFrame:
    """The rows of ``df`` at integer ``positions``, with their index labels."""
    return df.iloc[_host(positions)]


@be.numeric_tensor.register(_SERIES)
def numeric_tensor(series: pd.Series, device: Any = None) -> torch.Tensor:
    import torch

    return torch.tensor(series.to_numpy(), device=device)  # copies: pandas may hand out read-only views


@be.nullable.register(_SERIES)
def nullable(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return series.astype(pd.array(np.empty(0, dtype=dtype)).dtype)  # int64 -> Int64, ...
    return series


@be.local_positions.register((pd.Index,))
def local_positions(index: pd.Index, mask: int) -> pd.Index:
    return pd.Index(index.to_numpy() & mask)


@be.arange_index.register(_ANY)
def arange_index(like: Any, n: int) -> pd.RangeIndex:
    return pd.RangeIndex(n)


@be.content_hashes.register(_SERIES)
def content_hashes(series: pd.Series) -> pd.Series:
    values: Sequence[object] = byte_rows(series)
    out: list[str | None] = []
    for v in values:
        if isinstance(v, (bytes, bytearray, memoryview)):
            out.append(hashlib.sha256(v).hexdigest())
        elif v is None:
            out.append(None)
        else:
            raise TypeError(f"image bytes expected, got {type(v).__name__}")
    return pd.Series(out, dtype=HASH_DTYPE)


@be.pack_rows.register(_ANY)
def pack_rows(like: Any, x: torch.Tensor, original: Any, positions: np.ndarray) -> pd.Series:
    """The shuffle's copy of the embeddings: ``x`` as one ``large_binary`` value per row.

    Distributed's P2P shuffle cannot rebuild an Arrow ``list`` column in pandas (pandas#57411:
    the dtype string ``list<item: float>[pyarrow]`` in the pandas metadata does not parse), but
    ``large_binary`` round-trips, and packing is one zero-copy view of the float32 buffer.
    """
    return pack_floats(like, x)


@be.pack_floats.register(_ANY)
def pack_floats(like: Any, x: Any) -> pd.Series:
    """Float32 ``(m, w)`` rows as one ``large_binary`` column (:func:`pack_rows`' layout; read
    back by :func:`embedding_matrix`): one column to shuffle instead of ``w``."""
    rows = np.ascontiguousarray(_host(x), dtype=np.float32)
    m, d = rows.shape
    if m == 0:
        return pd.Series(pd.arrays.ArrowExtensionArray(pa.array([], pa.large_binary())))
    offsets = np.arange(m + 1, dtype=np.int64) * (d * 4)
    arr = pa.Array.from_buffers(pa.large_binary(), m, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))
