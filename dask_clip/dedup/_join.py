"""Route per-row results computed elsewhere (after a shuffle) back to the input rows.

Results carry the ``_row`` id of :mod:`._frame`. ``set_index("_row", divisions=...)`` sends the
result of every row to the output partition numbered like its input partition, sorted by
position; a partition-wise zip with the input then attaches them. Only the small result
columns travel back, never the input's own columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import backends
from . import _frame


def join_back(
    ddf: Any,
    results: Any,
    attach: Callable[..., Any],
    *,
    shuffle_method: str | None = None,
    **kwargs: Any,
) -> Any:
    """``attach(partition, its_results, **kwargs)`` for every input partition, lazily.

    Parameters
    ----------
    ddf
        The input Dask DataFrame (``N`` partitions).
    results
        Dask DataFrame with an int64 ``_row`` column, at most one row per input row (or
        several, if ``attach`` reduces them).
    attach
        Function of (input partition, results for it indexed by ``_row`` in position order)
        returning the output partition; it is also called on the metas to get the output meta.
    """
    return attach_routed(ddf, route(ddf, results, shuffle_method=shuffle_method), attach, **kwargs)


def route(ddf: Any, results: Any, *, shuffle_method: str | None = None) -> Any:
    """``results`` indexed by ``_row``, partition ``p`` holding the results of input partition ``p``."""
    return results.set_index("_row", divisions=_frame.row_divisions(ddf.npartitions), shuffle_method=shuffle_method)


def attach_routed(ddf: Any, routed: Any, attach: Callable[..., Any], **kwargs: Any) -> Any:
    """Zip every input partition with its routed results (:func:`route`) through ``attach``."""
    import dask.dataframe as dd

    meta = attach(ddf._meta, routed._meta, **kwargs)
    zipped = dd.map_partitions(
        attach,
        ddf,
        routed,
        **kwargs,
        meta=meta,
        align_dataframes=False,  # zip partition i with partition i; divisions differ on purpose
    )
    # Dask calls a frame built from two unrelated parents "not co-aligned", and would align
    # ``out[~out.duplicate]`` or ``out.a + out.b`` by shuffling on the index (wrong where index
    # labels repeat across partitions, slow everywhere). Built graph -> one from_delayed parent.
    parts = zipped.to_delayed()
    if len(parts) != ddf.npartitions:  # pragma: no cover - guarded by settle_partitions
        raise RuntimeError(f"{len(parts)} output partitions for {ddf.npartitions} input partitions")
    divisions = ddf.divisions if ddf.known_divisions else None
    return dd.from_delayed(parts, meta=meta, divisions=divisions, verify_meta=False)


def by_position(df: Any, res: Any) -> Any:
    """``res`` (indexed by ``_row``) reindexed to positions ``0..len(df)-1``; missing rows null."""
    res = res.copy(deep=False)
    res.index = backends.local_positions(res.index, _frame.ROW_MASK)
    return res.reindex(backends.arange_index(df, len(df)))


def best_per_row(res: Any, value: str, tie_keys: tuple[str, ...]) -> Any:
    """One result per ``_row`` label of ``res``: the largest ``value``, ties to the smallest ``tie_keys``.

    Parameters
    ----------
    res
        Results indexed by ``_row`` (labels may repeat); ``value`` is float (NaN lowest),
        ``tie_keys`` are numeric columns compared in order (NaN highest).

    Returns
    -------
    DataFrame
        The chosen rows of ``res``, same columns, unique index labels in ascending order.
    """
    import torch

    if len(res) == 0:
        return res
    rows = backends.numeric_tensor(_frame.index_values(res)).to(torch.int64)
    inf = float("inf")
    order = torch.arange(len(res), device=rows.device)
    for key in reversed(tie_keys):
        k = backends.numeric_tensor(res[key]).to(torch.float64)
        order = order[torch.argsort(torch.nan_to_num(k, nan=inf)[order], stable=True)]
    v = backends.numeric_tensor(res[value]).to(torch.float64)
    order = order[torch.argsort(-torch.nan_to_num(v, nan=-inf)[order], stable=True)]
    order = order[torch.argsort(rows[order], stable=True)]
    r = rows[order]
    first = torch.ones_like(r, dtype=torch.bool)
    first[1:] = r[1:] != r[:-1]
    return backends.take_rows(res, order[first])
