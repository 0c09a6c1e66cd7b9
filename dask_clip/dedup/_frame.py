"""Backend-neutral helpers of the dedup steps: row ids, partition bookkeeping, dtype checks.

Everything that differs between pandas and cuDF partitions is asked of :mod:`dask_clip.backends`;
the steps themselves (:mod:`.assign`, :mod:`.pairwise`, :mod:`.exact`) see tensors and backend
calls only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from .. import backends


def check_dtype(
    meta: Any,
    column: str,
    accepts: Callable[[pa.DataType], bool],
    expected: str,
    hint: str = "",
    *,
    strings_as_binary: bool = False,
) -> None:
    """TypeError unless ``meta[column]`` stores an Arrow type that ``accepts`` takes, or object.

    Parameters
    ----------
    meta
        A partition's meta (pandas or cuDF).
    column
        The column to check.
    accepts
        Predicate on the column's Arrow type (:func:`dask_clip.backends.column_type`).
    expected, hint
        What the message says is expected, and what to do about it.
    strings_as_binary
        Also accept strings on backends that store binary data as strings (cuDF).
    """
    series = meta[column]
    arrow_type = backends.column_type(series)
    if arrow_type is None or accepts(arrow_type):
        return
    if strings_as_binary and pa.types.is_string(arrow_type) and backends.binary_as_string(series):
        return
    raise TypeError(f"column {column!r} has dtype {series.dtype}; expected {expected}{hint}")


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


def to_host(t: Any) -> np.ndarray:
    """A torch tensor or CuPy/NumPy array as a NumPy array on the host."""
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    if hasattr(t, "get"):  # CuPy
        return t.get()
    return np.asarray(t)


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


def restore_dtype(series: Any, dtype: Any) -> Any:
    """``series`` cast back to ``dtype`` where a shuffle handed back another (string) dtype."""
    return series if dtype is None or series.dtype == dtype else series.astype(dtype)
