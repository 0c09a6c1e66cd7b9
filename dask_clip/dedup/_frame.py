"""The dataframe boundary of the dedup steps: partitions in, torch tensors out, and back.

Everything backend-specific for pandas partitions lives here; cuDF partitions are handed to
:mod:`dask_clip.dedup._cudf`, which offers the same functions. The steps themselves
(:mod:`.assign`, :mod:`.pairwise`, :mod:`.exact`) only see tensors and these helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .._backend import is_cudf

if TYPE_CHECKING:
    import torch


def check_dtype(meta: Any, column: str, arrow_types: tuple, expected: str, hint: str = "") -> None:
    """TypeError unless ``meta[column]`` is an Arrow type accepted by one of the ``arrow_types``
    predicates (``pa.types.is_*``) or object; cuDF columns are checked by their own code.

    Parameters
    ----------
    meta
        A partition's meta (pandas or cuDF).
    column
        The column to check.
    arrow_types
        ``pyarrow.types`` predicates, e.g. ``(pa.types.is_list, pa.types.is_large_list)``.
    expected, hint
        What the message says is expected, and what to do about it.
    """
    dtype = meta[column].dtype
    if isinstance(dtype, pd.ArrowDtype):
        if any(accepts(dtype.pyarrow_dtype) for accepts in arrow_types):
            return
    elif pd.api.types.is_object_dtype(dtype):
        return
    raise TypeError(f"column {column!r} has dtype {dtype}; expected {expected}{hint}")


# A row id packs (partition number, position in partition) as ``partition << ROW_BITS | position``.
# Its order is the global input order on every partitioning, so it breaks ties the same way
# whatever the partitioning, and ``partition << ROW_BITS`` are the divisions that route each
# result back to its own input partition (unique even where partitions are empty).
ROW_BITS = 40
ROW_MASK = (1 << ROW_BITS) - 1
MAX_PARTITIONS = 1 << (63 - ROW_BITS)


def row_ids(n: int, partition: int) -> np.ndarray:
    """Row ids of one partition: int64 ``(n,)``, ``partition << ROW_BITS | arange(n)``."""
    if n > ROW_MASK:
        raise ValueError(f"a partition holds {n} rows; at most {ROW_MASK} are supported")
    return (np.int64(partition) << np.int64(ROW_BITS)) + np.arange(n, dtype=np.int64)


def row_divisions(npartitions: int) -> list[int]:
    """Divisions that put the rows of input partition ``p`` into output partition ``p``."""
    if npartitions >= MAX_PARTITIONS:
        raise ValueError(f"at most {MAX_PARTITIONS - 1} partitions are supported")
    return [p << ROW_BITS for p in range(npartitions + 1)]


def nullable_dtype(dtype: Any) -> Any:
    """The dtype that can hold ``dtype``'s values plus missing ones (int64 -> Int64, ...)."""
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return pd.array(np.empty(0, dtype=dtype)).dtype
    return dtype


def nullable(s: Any) -> Any:
    """``s`` with a dtype that can also hold missing values (cuDF columns always can)."""
    return s if is_cudf(s) else s.astype(nullable_dtype(s.dtype))


def embeddings_to_numpy(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Embedding column of a pandas partition as a dense array of its usable rows.

    Parameters
    ----------
    s
        ``(n,)`` pandas Series of ``list<float>`` / ``fixed_size_list<float>`` (ArrowDtype) or
        object values holding 1-D arrays or lists.

    Returns
    -------
    x : numpy.ndarray
        float32 ``(m, d)``, the usable rows in order (``m = valid.sum()``).
    valid : numpy.ndarray
        bool ``(n,)``: the row has an embedding (not null, not empty, all values finite).

    Raises
    ------
    ValueError
        If usable rows differ in length.
    """
    n = len(s)
    if n == 0:
        return np.empty((0, 0), np.float32), np.zeros(0, bool)
    if isinstance(s.dtype, pd.ArrowDtype):
        arr = s.array.__arrow_array__().combine_chunks()
        if pa.types.is_large_binary(arr.type):
            return unpack_rows(arr), np.ones(n, bool)
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
            for v in s.to_numpy(dtype=object)
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
    return x, valid


def pack_rows(like: Any, x: torch.Tensor, original: Any, positions: np.ndarray) -> Any:
    """The shuffle's copy of the embeddings: ``x`` as one ``large_binary`` value per row.

    Distributed's P2P shuffle cannot rebuild an Arrow ``list`` column in pandas (pandas#57411:
    the dtype string ``list<item: float>[pyarrow]`` in the pandas metadata does not parse), but
    ``large_binary`` round-trips, and packing is one zero-copy view of the float32 buffer.
    cuDF has no binary dtype: there the original list rows are taken instead.

    Parameters
    ----------
    like
        A partition of the target backend.
    x
        torch float32 ``(m, d)``, the (normalised) embeddings of the rows at ``positions``.
    original, positions
        The input embedding column and the positions of the rows in ``x`` (cuDF path).
    """
    if is_cudf(like):
        return take(original, positions)
    rows = np.ascontiguousarray(to_host(x), dtype=np.float32)
    m, d = rows.shape
    if m == 0:
        return pd.Series(pd.arrays.ArrowExtensionArray(pa.array([], pa.large_binary())))
    offsets = np.arange(m + 1, dtype=np.int64) * (d * 4)
    arr = pa.Array.from_buffers(pa.large_binary(), m, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


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


def embedding_tensor(s: Any, device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding column (pandas or cuDF) as a torch tensor of its usable rows.

    Returns
    -------
    x : torch.Tensor
        float32 ``(m, d)`` on ``device`` (default: CPU for pandas, CUDA for cuDF).
    valid : torch.Tensor
        bool ``(n,)`` on the same device.
    """
    import torch

    if is_cudf(s):
        from . import _cudf

        return _cudf.embedding_tensor(s, device=device)
    x, valid = embeddings_to_numpy(s)
    dev = torch.device(device or "cpu")
    return torch.from_numpy(x).to(dev), torch.from_numpy(valid).to(dev)


def to_host(t: Any) -> np.ndarray:
    """A torch tensor or CuPy/NumPy array as a NumPy array on the host."""
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    if hasattr(t, "get"):  # CuPy
        return t.get()
    return np.asarray(t)


def column(like: Any, values: Any, dtype: Any = None) -> Any:
    """A 1-D numeric column for a partition like ``like`` (pandas or cuDF), no index.

    ``values`` is a torch tensor or an array; it stays on the GPU for cuDF partitions.
    """
    if is_cudf(like):
        from . import _cudf

        return _cudf.column(values, dtype=dtype)
    arr = to_host(values)
    return arr if dtype is None else arr.astype(dtype, copy=False)


def with_columns(df: Any, columns: dict[str, Any]) -> Any:
    """``df`` plus ``columns`` (arrays of ``len(df)``), keeping index, columns and row order."""
    if is_cudf(df):
        from . import _cudf

        return _cudf.with_columns(df, columns)
    out = df.copy(deep=False)
    for name, values in columns.items():
        out[name] = (
            pd.Series(values, index=df.index) if not isinstance(values, pd.Series) else values.set_axis(df.index)
        )
    return out


def frame(like: Any, columns: dict[str, Any], index: Any = None) -> Any:
    """A new DataFrame of the same backend as ``like`` from 1-D columns."""
    if is_cudf(like):
        from . import _cudf

        return _cudf.frame(columns, index=index)
    return pd.DataFrame(
        {k: v.reset_index(drop=True) if isinstance(v, pd.Series) else v for k, v in columns.items()},
        index=index,
    )


def take(s: Any, positions: Any) -> Any:
    """``s.iloc[positions]`` with a fresh default index (pandas or cuDF)."""
    if is_cudf(s):
        from . import _cudf

        return _cudf.take(s, positions)
    return s.iloc[to_host(positions)].reset_index(drop=True)


def index_values(df: Any) -> Any:
    """The index of ``df`` as a column (a Series with a default index)."""
    return df.index.to_series().reset_index(drop=True)


def partition_lengths(ddf: Any) -> np.ndarray:
    """Rows per partition, int64 ``(npartitions,)``, from one pass over ``ddf`` as given.

    Not over a projection of it: a column-projected Parquet read may be squashed into other
    partitions, and Parquet files whose pandas metadata holds an Arrow list dtype cannot be
    read without their list column at all (apache/arrow#46328).
    """
    return np.asarray(ddf.map_partitions(len, meta=(None, "int64")).compute(), dtype=np.int64)


def _identity(df: Any) -> Any:
    return df


def settle_partitions(ddf: Any) -> Any:
    """``ddf`` with the partitions Dask will really compute, as ``npartitions`` reports them.

    Dask may squash a column-projected Parquet read into fewer partitions when a graph is
    built while ``npartitions`` still counts files. The dedup steps number rows by partition and
    zip each input partition with its results, so both must agree: where they would not, the
    partitions of the built graph become the collection's (``from_delayed``). Costs a graph
    build, no compute.
    """
    import dask.dataframe as dd

    parts = ddf.map_partitions(_identity, meta=ddf._meta).to_delayed()
    if len(parts) == ddf.npartitions:
        return ddf
    return dd.from_delayed(parts, meta=ddf._meta, verify_meta=False)


def require_column(meta: Any, name: str, what: str) -> None:
    """Raise a ValueError naming the available columns if ``name`` is missing."""
    if name not in meta.columns:
        raise ValueError(f"{what} {name!r} is not a column; columns are {list(meta.columns)}")


def local_positions(index: Any) -> Any:
    """Positions inside their partition of an index of row ids (``_row & ROW_MASK``)."""
    if is_cudf(index):
        from . import _cudf

        return _cudf.local_positions(index, ROW_MASK)
    return pd.Index(index.to_numpy() & ROW_MASK)


def arange_index(like: Any, n: int) -> Any:
    """``0..n-1`` as an index of the backend of ``like``."""
    if is_cudf(like):
        from . import _cudf

        return _cudf.arange_index(n)
    return pd.RangeIndex(n)
