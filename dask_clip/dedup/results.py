"""Reading a :func:`~dask_clip.dedup.semantic_dedup` result: keep masks per eps, pairs, summary.

``max_similarity`` does not depend on eps, so one dedup run answers every eps: a row is a
duplicate at eps when ``max_similarity >= 1 - eps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..validation import check_eps
from .workflow import is_duplicate

__all__ = ["DEFAULT_SUMMARY_EPS", "dedup_summary", "duplicate_pairs", "keep_column", "keep_masks"]

DEFAULT_SUMMARY_EPS = (0.001, 0.01, 0.05)


def keep_column(eps: float) -> str:
    """Name of the keep-mask column for ``eps``: ``keep_eps_0.01``."""
    return f"keep_eps_{eps:g}"


def _check_eps_list(eps: float | Sequence[float]) -> list[float]:
    values = [eps] if not isinstance(eps, Sequence) or isinstance(eps, str) else list(eps)
    if not values:
        raise ValueError("eps must hold at least one value")
    return [check_eps(e) for e in values]


def _require(result: Any, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in result.columns]
    if missing:
        raise ValueError(f"not a semantic_dedup result: missing columns {missing}")


def _is_dask(obj: Any) -> bool:
    return hasattr(obj, "__dask_graph__")


def _masks(df: Any, eps: list[float]) -> Any:
    out = df[[]].copy()
    for e in eps:
        out[keep_column(e)] = ~is_duplicate(df["max_similarity"], e)
    return out


def keep_masks(result: Any, eps: float | Sequence[float]) -> Any:
    """Rows to keep at several eps values at once.

    Parameters
    ----------
    result
        Output of :func:`~dask_clip.dedup.semantic_dedup` (Dask, pandas or cuDF DataFrame).
    eps
        One or more eps values in [0, 1].

    Returns
    -------
    DataFrame
        Same kind, index and row order as ``result``; one bool column ``keep_eps_<eps>`` per
        eps, True where the row is kept (``not max_similarity >= 1 - eps``; rows without an
        embedding are always kept).
    """
    eps = _check_eps_list(eps)
    _require(result, ["max_similarity"])
    sub = result[["max_similarity"]]
    if _is_dask(sub):
        return sub.map_partitions(_masks, eps=eps, meta=_masks(sub._meta, eps))
    return _masks(sub, eps)


def duplicate_pairs(result: Any, eps: float | None = None, columns: Sequence[str] = ()) -> Any:
    """The flagged rows with the row each one duplicates.

    Parameters
    ----------
    result
        Output of :func:`~dask_clip.dedup.semantic_dedup`.
    eps
        Flag at this eps instead of the ``duplicate`` column's.
    columns
        Extra columns of ``result`` to carry (an image path, an id column, ...).

    Returns
    -------
    DataFrame
        Same kind as ``result``, one row per duplicate, index as in ``result``; columns
        ``*columns``, ``duplicate_of`` (the id of the most similar row ranked ahead, which may
        itself be a duplicate), ``max_similarity`` and ``cluster``. Look the partner up by id
        (index label, or ``id_column`` if one was given) to show the pair side by side.
    """
    _require(result, ["cluster", "max_similarity", "duplicate", "duplicate_of", *columns])
    mask = result["duplicate"] if eps is None else is_duplicate(result["max_similarity"], check_eps(eps))
    return result.loc[mask, [*columns, "duplicate_of", "max_similarity", "cluster"]]


def _partition_stats(df: Any, eps: list[float]) -> pd.DataFrame:
    ms = df["max_similarity"]
    row = {"rows": len(df), "embedded": int((df["cluster"] >= 0).sum())}
    for i, e in enumerate(eps):
        row[f"dup{i}"] = int(is_duplicate(ms, e).sum())
    return pd.DataFrame([row], dtype="int64")


def summary_parts(result: Any, eps: Sequence[float] = DEFAULT_SUMMARY_EPS) -> tuple[Any, Any]:
    """Lazy pieces of :func:`dedup_summary` (to compute together with a write)."""
    eps = _check_eps_list(eps)
    _require(result, ["cluster", "max_similarity"])
    sub = result[["cluster", "max_similarity"]]
    if not _is_dask(sub):
        return _partition_stats(sub, eps).sum(), sub["cluster"].value_counts()
    stats = sub.map_partitions(
        _partition_stats, eps=eps, meta=_partition_stats(sub._meta.iloc[:0], eps), enforce_metadata=False
    ).sum()
    return stats, sub["cluster"].value_counts()


def summary_frame(stats: Any, sizes: Any, eps: Sequence[float] = DEFAULT_SUMMARY_EPS) -> pd.DataFrame:
    """Build the summary table from computed :func:`summary_parts`."""
    eps = _check_eps_list(eps)
    sizes = pd.Series(sizes.to_pandas() if hasattr(sizes, "to_pandas") else sizes)
    sizes = sizes[sizes.index >= 0]
    rows, embedded = int(stats["rows"]), int(stats["embedded"])
    table = pd.DataFrame(
        {
            "eps": eps,
            "rows": rows,
            "embedded": embedded,
            "clusters": len(sizes),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "duplicates": [int(stats[f"dup{i}"]) for i in range(len(eps))],
        }
    )
    table["kept"] = table["rows"] - table["duplicates"]
    table["kept_fraction"] = table["kept"] / max(rows, 1)
    return table.set_index("eps")


def dedup_summary(result: Any, eps: float | Sequence[float] = DEFAULT_SUMMARY_EPS) -> pd.DataFrame:
    """Rows, clusters and duplicates per eps, in one pass.

    Parameters
    ----------
    result
        Output of :func:`~dask_clip.dedup.semantic_dedup` (Dask, pandas or cuDF DataFrame).
    eps
        eps values to count duplicates at.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``eps``; columns ``rows``, ``embedded`` (rows with an embedding),
        ``clusters`` (non-empty clusters), ``largest_cluster``, ``duplicates``, ``kept`` and
        ``kept_fraction``.
    """
    eps = _check_eps_list(eps)
    stats, sizes = summary_parts(result, eps)
    if _is_dask(stats):
        import dask

        stats, sizes = dask.compute(stats, sizes)
    return summary_frame(stats, sizes, eps)
