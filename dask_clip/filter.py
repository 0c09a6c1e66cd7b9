"""Filtering an embeddings dataset on its scores: what ``dask-clip filter IN OUT`` runs.

Each threshold is a rule on one column; a row is kept when it passes every rule. A row whose
score is null (its image or caption failed, so the score was never computed) does not pass
that rule. The output keeps the input's columns and partitioning, one file per input
partition through :mod:`dask_clip.io.writers.parquet` (atomic, resumable, refused when a different job
wrote the folder), and a summary says how many rows each rule removes.

The thresholds are the heads' filter rules (:mod:`dask_clip.heads.options`: each head module
declares its own); the shipped ones:

=================  ================================  ==========================================
argument           keeps a row when                  for
=================  ================================  ==========================================
``min_aesthetic``  ``aesthetic_score >= value``      :class:`~dask_clip.heads.AestheticHead`, ~1-10
``max_nsfw``       ``nsfw_score < value``            :class:`~dask_clip.heads.NSFWHead` (NeMo's rule)
``min_clip_score`` ``clip_score >= value``           ``ImageEmbedder(text_column=...)``
``labels``         ``zero_shot_label`` in ``labels``  :func:`~dask_clip.heads.zero_shot_heads`
=================  ================================  ==========================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .io.file_metadata import carried, read_file_metadata
from .io.writers.base import location
from .io.writers.parquet import write_tasks

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["SUMMARY_FILE", "FilterSummary", "Rule", "filter_frame", "filter_parquet", "filter_rules"]

#: The summary of a finished run, next to its part files (read back by a rerun).
SUMMARY_FILE = "_filter_summary.json"


@dataclass(frozen=True)
class Rule:
    """One threshold: rows pass when ``column`` compares to ``value`` as ``op`` says.

    Attributes
    ----------
    column : str
    op : str
        ``">="``, ``"<"`` or ``"in"``.
    value : float or tuple of str
    """

    column: str
    op: str
    value: Any

    @property
    def name(self) -> str:
        """How the summary names it, e.g. ``"aesthetic_score >= 5"``."""
        value = list(self.value) if self.op == "in" else f"{self.value:g}"
        return f"{self.column} {self.op} {value}"

    def passes(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """bool (N,) rows that pass, and bool (N,) rows whose value is null."""
        values = df[self.column]
        missing = values.isna().to_numpy(dtype=bool)
        if self.op == "in":
            ok = values.isin(list(self.value))
        elif self.op == ">=":
            ok = values >= self.value
        else:
            ok = values < self.value
        return ok.fillna(False).to_numpy(dtype=bool) & ~missing, missing


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def filter_rules(**thresholds: Any) -> list[Rule]:
    """The rules of the given thresholds (see the module docstring), checked.

    Parameters
    ----------
    **thresholds
        Each head's threshold (``min_aesthetic``, ``max_nsfw``, ``min_clip_score``, ``labels``,
        ...; None: not applied) and the column it applies to (``aesthetic_column``, ...).

    Raises
    ------
    ValueError, TypeError
        No threshold at all, a threshold that is not a number, an empty label list, an
        argument no head declares.
    """
    from .heads.options import filter_rules_of

    declared = filter_rules_of()
    given = dict(thresholds)
    rules = []
    for rule in declared:
        value = given.pop(rule.keyword, None)
        column = given.pop(rule.column_keyword, rule.column)
        if value is not None:
            rules.append(Rule(column, rule.op, rule.check(rule.keyword, value)))
    if given:
        known = [name for rule in declared for name in (rule.keyword, rule.column_keyword)]
        raise TypeError(f"unexpected filter arguments {sorted(given)}; the thresholds and columns are {known}")
    if not rules:
        raise ValueError(f"give at least one threshold: {_either([rule.keyword for rule in declared])}")
    return rules


def _keep(df: pd.DataFrame, rules: Sequence[Rule]) -> pd.DataFrame:
    keep = np.ones(len(df), dtype=bool)
    for rule in rules:
        keep &= rule.passes(df)[0]
    return df[keep]


def _counts(df: pd.DataFrame, rules: Sequence[Rule]) -> dict[str, Any]:
    """One partition's tallies: rows, kept, and per rule removed / null / removed by it alone."""
    passed = [rule.passes(df) for rule in rules]
    ok = np.array([p for p, _ in passed]).reshape(len(rules), len(df))
    fails = ~ok
    alone = fails & (fails.sum(axis=0) == 1)
    return {
        "rows": len(df),
        "kept": int(ok.all(axis=0).sum()),
        "removed": [int(f.sum()) for f in fails],
        "missing": [int(m.sum()) for _, m in passed],
        "only": [int(a.sum()) for a in alone],
    }


@dataclass
class FilterSummary:
    """What a filter removed.

    Attributes
    ----------
    rules : list of str
        The rules, as named in the table.
    rows, kept : int
        Input rows, and rows passing every rule.
    removed : list of int
        Per rule, the rows it removes (failing it, whatever the other rules say).
    missing : list of int
        Per rule, how many of those had no score at all (null).
    only : list of int
        Per rule, the rows no other rule removes.
    written, skipped : int
        Part files written by this call, and already there.
    """

    rules: list[str]
    rows: int
    kept: int
    removed: list[int]
    missing: list[int]
    only: list[int]
    written: int = 0
    skipped: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per rule: ``removed``, ``no score``, ``removed only by it``."""
        return pd.DataFrame(
            {"removed": self.removed, "no score": self.missing, "removed only by it": self.only},
            index=pd.Index(self.rules, name="rule"),
        )

    def to_string(self) -> str:
        """The table, then the totals."""
        lines = [self.to_frame().to_string(), ""]
        lines.append(f"{self.rows} rows: {self.kept} kept, {self.rows - self.kept} removed")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_frame(ddf: dd.DataFrame, **thresholds: Any) -> dd.DataFrame:
    """The rows of ``ddf`` that pass every threshold, lazily (same partitions, same columns).

    Parameters
    ----------
    ddf
        A Dask DataFrame with the score columns (pandas partitions).
    **thresholds
        :func:`filter_rules`' arguments: ``min_aesthetic``, ``max_nsfw``, ``min_clip_score``,
        ``labels`` and the column names.

    Raises
    ------
    ValueError, TypeError
        No threshold, a bad one, or a column ``ddf`` lacks.
    """
    return _filtered(ddf, filter_rules(**thresholds))


def _filtered(ddf: dd.DataFrame, rules: Sequence[Rule]) -> dd.DataFrame:
    _check_columns(ddf.columns, rules, ddf.dtypes)
    return ddf.map_partitions(_keep, tuple(rules), meta=ddf._meta, token="clip_filter")


def _check_columns(columns: Sequence[str], rules: Sequence[Rule], dtypes: Any = None) -> None:
    names = list(columns)
    missing = [rule.column for rule in rules if rule.column not in names]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the input (its columns: {names}); embed with the heads or "
            "text column that add them, or name the columns (--aesthetic-column ...)"
        )
    if dtypes is None:
        return
    for rule in rules:
        dtype = dtypes[rule.column]
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        text = pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)
        if rule.op != "in" and not numeric:
            raise TypeError(
                f"column {rule.column!r} holds {dtype}, not numbers: it cannot be compared with {rule.name}; "
                "name the score column (--aesthetic-column, --nsfw-column, --clip-score-column)"
            )
        if rule.op == "in" and not text:
            raise TypeError(f"column {rule.column!r} holds {dtype}, not label names; name it with --label-column")


def filter_parquet(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    **thresholds: Any,
) -> FilterSummary:
    """Filter an embeddings Parquet dataset on its scores into a new folder, resumably.

    Parameters
    ----------
    input_path
        Parquet file(s) or folder, e.g. the output of ``dask-clip embed`` with heads.
    output_path
        Output folder: ``part-NNNNN.parquet`` per input partition (some may hold no rows), a
        ``_dask_clip.json`` manifest and the ``_filter_summary.json`` summary.
    overwrite
        Start over instead of resuming.
    storage_options
        fsspec options.
    **thresholds
        The thresholds (``min_aesthetic``, ``max_nsfw``, ``min_clip_score``, ``labels``, ...;
        None: not applied) and their columns (``aesthetic_column``, ...): :func:`filter_rules`.

    Returns
    -------
    FilterSummary
        Counted over every input row, in the same computation as the writes.

    Raises
    ------
    ValueError, TypeError
        No threshold, a bad threshold, a missing column, or an output folder of another job.
    """
    import dask
    from fsspec.core import url_to_fs

    rules = filter_rules(**thresholds)
    from .io.outputs import read_output  # Parquet, the LAION layout or Lance

    ddf = read_output(input_path, storage_options)
    kept = _filtered(ddf, rules)
    # exact thresholds (the names round them to 6 digits for the summary)
    job = {
        "command": "filter",
        "input": location(input_path),
        "rules": [[r.column, r.op, list(r.value) if r.op == "in" else r.value] for r in rules],
    }
    writes = write_tasks(
        kept,
        output_path,
        overwrite=overwrite,
        job=job,
        storage_options=storage_options,
        # the output keeps the input's image and key columns: `index` and `serve` find them there too
        file_metadata=carried(read_file_metadata(input_path, storage_options), kept.columns),
    )
    fs, root = url_to_fs(os.fspath(output_path), **(storage_options or {}))
    summary_file = f"{root.rstrip('/')}/{SUMMARY_FILE}"
    if not writes and fs.exists(summary_file):
        summary = FilterSummary(**json.loads(fs.cat_file(summary_file)))
        summary.written, summary.skipped = 0, ddf.npartitions
        return summary
    if fs.exists(summary_file):  # a summary of an earlier run: stale until this one finishes
        fs.rm(summary_file)
    # The tallies read only the score columns, for every partition (also those already written).
    scores = read_output(input_path, storage_options)[sorted({r.column for r in rules})]
    counts = [dask.delayed(_counts)(part, rules) for part in scores.to_delayed()]
    _, counts = dask.compute(writes, counts)
    summary = FilterSummary(
        rules=[r.name for r in rules],
        rows=sum(c["rows"] for c in counts),
        kept=sum(c["kept"] for c in counts),
        removed=[sum(c["removed"][i] for c in counts) for i in range(len(rules))],
        missing=[sum(c["missing"][i] for c in counts) for i in range(len(rules))],
        only=[sum(c["only"][i] for c in counts) for i in range(len(rules))],
        written=len(writes),
        skipped=ddf.npartitions - len(writes),
    )
    with fs.open(summary_file, "w") as f:
        record = {k: v for k, v in summary.to_dict().items() if k not in ("written", "skipped")}
        f.write(json.dumps(record, indent=2))
    return summary
