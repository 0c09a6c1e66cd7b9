"""cuDF partitions: the GPU side of :mod:`._frame` (same functions, arrays stay on the device).

Only the hand-off between cuDF columns and torch tensors differs from the pandas path; the
steps are shared. The embedding column is read without a copy: a ``list<float32>`` column's
leaves are one flat device buffer, ``s.list.leaves.values.reshape(n, d)`` is a CuPy view of it
and ``torch.from_dlpack`` a torch view of that (NeMo Curator's ``get_array_from_df``).

Not tested in this repository's CI (no GPU); written against cuDF >= 25.06's documented API.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _cp() -> Any:
    import cupy

    return cupy


def _to_cupy(values: Any) -> Any:
    """torch tensor / NumPy / CuPy -> CuPy (no copy for CUDA tensors: CUDA array interface)."""
    cp = _cp()
    if hasattr(values, "detach"):
        values = values.detach()
        return cp.asarray(values) if values.is_cuda else cp.asarray(values.numpy())
    return cp.asarray(values)


def embedding_tensor(s: Any, device: str | None = None) -> tuple[Any, Any]:
    """cuDF ``list<float32>`` Series -> (torch float32 ``(m, d)``, torch bool ``(n,)``).

    Rows that are null, empty or hold a non-finite value are invalid and left out of ``x``.
    """
    import torch

    dev = torch.device(device or "cuda")
    n = len(s)
    if n == 0:
        return torch.empty((0, 0), dtype=torch.float32, device=dev), torch.zeros(0, dtype=torch.bool, device=dev)
    lengths = s.list.len().fillna(0)
    nonnull = lengths > 0
    if not bool(nonnull.all()):
        s = s[nonnull]  # gathers the usable rows (a copy); the common no-null case stays zero-copy
        lengths = lengths[nonnull]
    m = len(s)
    d = int(lengths.max()) if m else 0
    if m and int(lengths.min()) != d:
        raise ValueError(f"embeddings of different lengths: {int(lengths.min())}..{d}")
    leaves = s.list.leaves
    if len(leaves) != m * d:  # a sliced column exposes its parent's leaves: compact it first
        leaves = s.copy(deep=True).list.leaves
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


def numeric_tensor(s: Any) -> Any:
    """A numeric cuDF Series without nulls as a torch tensor (zero-copy view)."""
    import torch

    return torch.from_dlpack(s.values)


def column(values: Any, dtype: Any = None) -> Any:
    """torch / NumPy / CuPy 1-D values -> cuDF Series with a default index."""
    import cudf

    out = cudf.Series(_to_cupy(values))
    return out if dtype is None else out.astype(dtype)


def frame(columns: dict[str, Any], index: Any = None) -> Any:
    """cuDF DataFrame from 1-D columns (Series are taken in order, their index dropped)."""
    import cudf

    data = {k: (v.reset_index(drop=True) if isinstance(v, cudf.Series) else column(v)) for k, v in columns.items()}
    out = cudf.DataFrame(data)
    if index is not None:
        out.index = index
    return out


def with_columns(df: Any, columns: dict[str, Any]) -> Any:
    """``df`` plus ``columns`` (positionally aligned), keeping index and row order."""
    import cudf

    out = df.copy(deep=False)
    for name, values in columns.items():
        v = values.reset_index(drop=True) if isinstance(values, cudf.Series) else column(values)
        v.index = df.index
        out[name] = v
    return out


def take(s: Any, positions: Any) -> Any:
    """``s.iloc[positions]`` with a default index."""
    return s.iloc[_to_cupy(np.asarray(positions) if isinstance(positions, list) else positions)].reset_index(drop=True)


def local_positions(index: Any, mask: int) -> Any:
    """``index & mask`` as a cuDF Index."""
    import cudf

    return cudf.Index(index.values & mask)


def arange_index(n: int) -> Any:
    """``cudf.RangeIndex(n)``."""
    import cudf

    return cudf.RangeIndex(n)


def content_hashes(s: Any) -> Any:
    """SHA-256 hex digests of a cuDF string Series (cuDF reads Parquet binary as string)."""
    out = s.hash_values(method="sha256")
    return out.where(s.notna()).reset_index(drop=True)
