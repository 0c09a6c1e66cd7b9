"""Optional cheap first pass: exact duplicates, i.e. identical image bytes (SHA-256).

Every row's bytes are hashed in its own partition; a shuffle on the hash gathers equal hashes;
the first occurrence in global input order is kept and the others are flagged; only
(row id, flag, hash, first id) travel back to the input rows, never the bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .. import backends
from ..backends.arrow import is_binary_type
from ..validation import check_int
from . import _frame, _join
from .workflow import check_dask_frame, check_shuffle_method

__all__ = ["EXACT_COLUMNS", "content_hashes", "exact_duplicates"]

EXACT_COLUMNS = ("content_hash", "exact_duplicate", "exact_duplicate_of")


def content_hashes(s: Any) -> Any:
    """SHA-256 hex digest of every row's bytes.

    Parameters
    ----------
    s
        ``(n,)`` pandas Series of bytes (``pd.ArrowDtype(pa.binary())`` / ``large_binary``, or
        object holding ``bytes``), or a cuDF string Series (cuDF reads binary as string).

    Returns
    -------
    Series
        ``(n,)`` 64-character hex strings, null where the bytes are null; default index.
    """
    return backends.content_hashes(s)


def _check_bytes_dtype(meta: Any, column: str) -> None:
    _frame.check_dtype(
        meta,
        column,
        lambda t: is_binary_type(t) or pa.types.is_fixed_size_binary(t),
        "image bytes: pd.ArrowDtype(pa.binary()) or object bytes",
        strings_as_binary=True,
    )


def _hash_partition(df: Any, *, column: str, id_column: str | None, partition_info: dict | None = None) -> Any:
    number = partition_info["number"] if partition_info is not None else 0
    ids = df[id_column].reset_index(drop=True) if id_column is not None else _frame.index_values(df)
    ids = backends.nullable(ids)
    hashes = content_hashes(df[column])
    pos = np.flatnonzero(_frame.to_host(hashes.notna().to_numpy()))
    return backends.new_frame(
        df,
        {
            "_row": backends.new_column(df, _frame.row_ids(len(df), number)[pos], "int64"),
            "content_hash": backends.take(hashes, pos),
            "_id": backends.take(ids, pos),
        },
    )


def _first_occurrence(df: Any) -> Any:
    """Flag all but the lowest ``_row`` of every hash (the partition holds whole hash groups)."""
    df = df.sort_values(["content_hash", "_row"]).reset_index(drop=True)
    h = df["content_hash"]
    first = h.ne(h.shift()).fillna(True).astype(bool)
    first_id = df["_id"].where(first).ffill()
    return backends.new_frame(
        df,
        {
            "_row": df["_row"],
            "content_hash": h,
            "exact_duplicate": ~first,
            "exact_duplicate_of": first_id.where(~first),
        },
    )


def _attach(df: Any, res: Any, hash_dtype: Any = None, id_dtype: Any = None) -> Any:
    r = _join.by_position(df, res)
    return backends.with_columns(
        df,
        {
            "content_hash": _frame.restore_dtype(r["content_hash"], hash_dtype),
            "exact_duplicate": r["exact_duplicate"].fillna(False).astype(bool),
            "exact_duplicate_of": _frame.restore_dtype(r["exact_duplicate_of"], id_dtype),
        },
    )


def exact_duplicates(
    ddf: Any,
    column: str = "image",
    *,
    id_column: str | None = None,
    npartitions: int | None = None,
    shuffle_method: str | None = None,
) -> Any:
    """Flag rows whose bytes equal those of an earlier row (global input order).

    Parameters
    ----------
    ddf
        Dask DataFrame (pandas or cuDF partitions).
    column
        Image bytes column (``pd.ArrowDtype(pa.binary())`` or object bytes; string on cuDF).
    id_column
        Column naming a row in ``exact_duplicate_of``; default: the index label.
    npartitions
        Partitions of the hash shuffle; default ``ddf.npartitions``.
    shuffle_method
        Dask's shuffle method (``"p2p"``, ``"tasks"``, ``"disk"``); default: Dask's choice.

    Returns
    -------
    dask DataFrame
        The input rows (same index, columns, order and partitions) plus ``content_hash``
        (SHA-256 hex string, null where the bytes are null), ``exact_duplicate`` (bool: True for
        every occurrence but the first) and ``exact_duplicate_of`` (id of the first occurrence;
        null for rows that are not exact duplicates).

    Notes
    -----
    Run it before :func:`~dask_clip.dedup.semantic_dedup` and drop the flagged rows (or embed
    only the first occurrences): they would be flagged by the semantic pass too (cosine 1),
    but hashing is far cheaper than embedding and catches them even where the image could not
    be decoded.
    """
    check_dask_frame(ddf)
    _frame.require_column(ddf._meta, column, "column")
    if id_column is not None:
        _frame.require_column(ddf._meta, id_column, "id_column")
    _check_bytes_dtype(ddf._meta, column)
    check_int("npartitions", npartitions, 1, allow_none=True)
    check_shuffle_method(shuffle_method)
    clash = [c for c in EXACT_COLUMNS if c in ddf._meta.columns]
    if clash:
        raise ValueError(f"input already has output columns {clash}; drop or rename them first")
    _frame.row_divisions(ddf.npartitions)
    ddf = _frame.settle_partitions(ddf)

    kw: dict[str, Any] = dict(column=column, id_column=id_column)
    hashed = ddf.map_partitions(_hash_partition, **kw, meta=_hash_partition(ddf._meta, **kw), enforce_metadata=False)
    grouped = hashed.shuffle(
        on="content_hash", npartitions=npartitions or ddf.npartitions, shuffle_method=shuffle_method
    )
    flagged = grouped.map_partitions(_first_occurrence, meta=_first_occurrence(hashed._meta), enforce_metadata=False)
    return _join.join_back(
        ddf,
        flagged,
        _attach,
        hash_dtype=hashed._meta["content_hash"].dtype,
        id_dtype=hashed._meta["_id"].dtype,
        shuffle_method=shuffle_method,
    )
