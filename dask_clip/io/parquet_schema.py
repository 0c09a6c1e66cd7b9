"""The Arrow type a Parquet file gives a column of a lazy Dask DataFrame, without reading data.

``dd.read_parquet`` reads each file's schema (the footer) when it is called, and keeps it in
its expression. A ``binary`` Parquet column without pandas metadata (img2dataset's ``jpg``,
a ``pyarrow`` table) arrives as an ``object`` column whose dtype no longer says "bytes"; the
schema still does. This module looks it up, so ``embedder(ddf)`` can tell encoded bytes from
paths without computing a single partition.

Only expressions that keep a column's values as they are (a column selection, a row filter,
a partition selection, ``repartition``, ``head``/``tail``) are followed back to the Parquet
read; anything else (an ``assign``, a ``rename``, a ``map_partitions``) may have replaced the
column, and the answer is None.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["parquet_column_type"]


def _read_parquet_below(expr: Any) -> Any:
    """The ReadParquet expression ``expr`` leaves a column's values unchanged from, or None."""
    try:  # dask-expr's classes: absent or renamed in another dask, the caller reads instead
        from dask.dataframe.dask_expr._expr import Filter, Head, Partitions, Projection, Tail
        from dask.dataframe.dask_expr._repartition import Repartition
        from dask.dataframe.dask_expr.io.parquet import ReadParquet
    except ImportError:
        return None
    keeps_values = (Projection, Filter, Partitions, Repartition, Head, Tail)
    while not isinstance(expr, ReadParquet):
        if not isinstance(expr, keeps_values):
            return None
        expr = expr.frame
    return expr


def parquet_column_type(ddf: Any, column: str) -> pa.DataType | None:
    """The Arrow type of ``column`` in the Parquet files ``ddf`` reads, from their schema.

    Parameters
    ----------
    ddf
        A Dask DataFrame.
    column
        One of its columns.

    Returns
    -------
    pyarrow.DataType or None
        None where ``ddf`` is not (a value-preserving selection of) ``dd.read_parquet``, or
        the schema does not name ``column``.
    """
    read = _read_parquet_below(getattr(ddf, "expr", None))
    if read is None:
        return None
    try:
        schema = read._dataset_info["schema"]
        index = schema.get_field_index(column)
    except (AttributeError, KeyError, TypeError):
        return None
    return schema.field(index).type if index >= 0 else None
