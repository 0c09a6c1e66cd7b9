"""The id table: faiss id -> source row, with the columns users want back in results.

One Parquet file per input partition (``ids/part-NNNNN.parquet``), one row per indexed vector,
in faiss-id order. Columns:

- ``id`` (int64): the faiss id, ``partition << 40 | partition_row`` (the dedup steps' row id);
- ``partition`` (int32), ``partition_row`` (int64): where the row is in the input;
- the key column and the metadata columns chosen at build time (never the embedding; image
  bytes only when asked for).

``source_row``, the row's global position in the input (rows without an embedding included),
is added on load from the partition lengths in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "ID",
    "PARTITION",
    "PARTITION_ROW",
    "RESERVED",
    "RESULT_COLUMNS",
    "SOURCE_ROW",
    "default_columns",
    "filter_ids",
    "id_part",
    "is_binary_dtype",
]

ID = "id"
PARTITION = "partition"
PARTITION_ROW = "partition_row"
SOURCE_ROW = "source_row"
RESULT_COLUMNS = ("query", "rank", "similarity")
RESERVED = (ID, PARTITION, PARTITION_ROW, SOURCE_ROW, *RESULT_COLUMNS)


def is_binary_dtype(dtype: Any) -> bool:
    """Arrow ``binary``/``large_binary`` columns (image bytes)."""
    return isinstance(dtype, pd.ArrowDtype) and (
        pa.types.is_binary(dtype.pyarrow_dtype) or pa.types.is_large_binary(dtype.pyarrow_dtype)
    )


def _is_list_dtype(dtype: Any) -> bool:
    if not isinstance(dtype, pd.ArrowDtype):
        return False
    t = dtype.pyarrow_dtype
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def default_columns(meta: pd.DataFrame, embedding_column: str, image_column: str | None) -> list[str]:
    """The columns kept by default: all but the embedding, other list columns and binary
    columns; the image column is kept whatever its type (the caller asked for it).

    Object columns are kept: their values (strings, numbers) are only known per partition.
    """
    kept = []
    for column, dtype in meta.dtypes.items():
        name = str(column)
        if name == embedding_column:
            continue
        if name != image_column and (is_binary_dtype(dtype) or _is_list_dtype(dtype)):
            continue
        kept.append(name)
    return kept


def check_columns(
    meta: pd.DataFrame, embedding_column: str, columns: Sequence[str], key_column: str | None, image_column: str | None
) -> None:
    """ValueError naming the problem when the chosen columns cannot make an id table."""
    names = [str(c) for c in meta.columns]
    if embedding_column not in names:
        raise ValueError(f"embedding_column={embedding_column!r} is not a column; columns are {names}")
    for what, name in (("key_column", key_column), ("image_column", image_column)):
        if name is not None and name not in names:
            raise ValueError(f"{what}={name!r} is not a column; columns are {names}")
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"columns {missing} are not in the input; columns are {names}")
    if embedding_column in columns:
        raise ValueError(f"columns must not include the embedding column {embedding_column!r}")
    clash = [c for c in columns if c in RESERVED]
    if clash:
        raise ValueError(
            f"columns {clash} clash with the names the index adds {list(RESERVED)}; "
            "rename them or leave them out (columns=[...])"
        )


def id_part(df: pd.DataFrame, partition: int, valid: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    """The id-table rows of one partition: its rows that have an embedding, in order.

    Parameters
    ----------
    df
        A pandas partition.
    partition
        Its number.
    valid
        bool (len(df),): the row has a usable embedding.
    columns
        Metadata columns to keep.

    Returns
    -------
    pandas.DataFrame
        ``id``, ``partition``, ``partition_row`` and ``columns``, ``valid.sum()`` rows,
        with a fresh RangeIndex.
    """
    from ..dedup._frame import ROW_BITS

    positions = np.flatnonzero(valid).astype(np.int64)
    out = df.iloc[positions][list(columns)].reset_index(drop=True)
    out.insert(0, PARTITION_ROW, positions)
    out.insert(0, PARTITION, np.int32(partition))
    out.insert(0, ID, (np.int64(partition) << np.int64(ROW_BITS)) + positions)
    return out


def filter_ids(table: pa.Table, filters: Any) -> np.ndarray:
    """The faiss ids of the rows that pass ``filters``.

    Parameters
    ----------
    table
        The id table (Arrow).
    filters
        pyarrow/Dask ``read_parquet`` style filters: ``[("aesthetic", ">=", 5.0)]`` (AND), or a
        list of such lists (OR of ANDs); or a ``pyarrow.compute.Expression``.

    Returns
    -------
    numpy.ndarray
        int64 ids, sorted.

    Raises
    ------
    ValueError
        A filter names a column the id table does not have.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if isinstance(filters, pc.Expression):
        expression = filters
    else:
        clauses = filters if filters and isinstance(filters[0], list) else [filters]
        names = set(table.column_names)
        unknown = sorted({str(c[0]) for clause in clauses for c in clause} - names)
        if unknown:
            raise ValueError(f"filters name {unknown}, which the id table does not have; it has {sorted(names)}")
        expression = pq.filters_to_expression(filters)
    try:
        kept = table.filter(expression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise ValueError(f"cannot apply filters {filters!r}: {err}") from err
    return np.sort(kept.column(ID).to_numpy())
