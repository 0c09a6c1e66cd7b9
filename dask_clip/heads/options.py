"""What a head offers the command line: its ``dask-clip embed`` options and its ``filter`` rule.

A head module defines ``CLI = HeadOptions(...)``; :func:`head_options` finds them (on first use,
never at import) and ``dask-clip embed``, ``dask-clip filter``, :func:`dask_clip.filter.filter_rules`
and :func:`dask_clip.cli.embed.score_heads` read them, so a new head usable from the command
line and from ``filter`` is one module plus its test. Light: no torch, no pandas.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import ModuleRegistry

__all__ = ["FilterRule", "HeadOptions", "filter_rules_of", "finite_number", "head_options", "label_list"]


def finite_number(keyword: str, value: object) -> float:
    """``value`` as a float; TypeError unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TypeError(f"{keyword} must be a finite number, not {value!r}")
    return float(value)


def label_list(keyword: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of label names; ValueError unless a non-empty list of non-empty strings."""
    if isinstance(value, str) or not value or not all(isinstance(x, str) and x for x in value):  # type: ignore[attr-defined]
        raise ValueError(f"{keyword} must be a non-empty list of label names, not {value!r}")
    return tuple(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FilterRule:
    """One threshold of ``dask-clip filter`` / :func:`dask_clip.filter.filter_rules`.

    Attributes
    ----------
    keyword : str
        The Python keyword (``"min_aesthetic"``); the CLI flag is ``--min-aesthetic`` unless ``flag``.
    column : str
        The column it applies to by default (``"aesthetic_score"``).
    column_keyword : str
        The keyword naming another column (``"aesthetic_column"``; CLI ``--aesthetic-column``).
    op : str
        ``">="``, ``"<"`` or ``"in"``: a row passes when ``column op value``.
    help : str
        The CLI help.
    metavar : str
    check : callable
        ``check(keyword, value) -> value``: the value checked and converted (TypeError/ValueError).
    flag : str or None
        The CLI flag, if not made from ``keyword``; an ``"in"`` rule's flag repeats.
    """

    keyword: str
    column: str
    column_keyword: str
    op: str
    help: str
    metavar: str = "X"
    check: Callable[[str, Any], Any] = finite_number
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.keyword.replace("_", "-")

    @property
    def column_flag(self) -> str:
        return "--" + self.column_keyword.replace("_", "-")

    def add_arguments(self, thresholds: argparse._ArgumentGroup, columns: argparse._ArgumentGroup) -> None:
        """Its threshold flag and its column flag, on ``dask-clip filter``'s parser."""
        if self.op == "in":
            thresholds.add_argument(
                self.cli_flag, dest=self.keyword, action="append", metavar=self.metavar, help=self.help
            )
        else:
            thresholds.add_argument(self.cli_flag, dest=self.keyword, type=float, metavar=self.metavar, help=self.help)
        columns.add_argument(self.column_flag, dest=self.column_keyword, default=self.column, metavar="NAME")


@dataclass(frozen=True)
class HeadOptions:
    """A head's command-line face (a head module's ``CLI``).

    Attributes
    ----------
    name : str
    priority : int
        Order of the options in the help, of the rules and of the summary's rows.
    add_arguments : callable or None
        ``add_arguments(group)``: its ``dask-clip embed`` options, on the "captions and scores" group.
    heads : callable or None
        ``heads(args) -> list of Head``: the heads the parsed options ask for (empty if none).
    rule : FilterRule or None
        Its ``filter`` threshold.
    """

    name: str
    priority: int = 50
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None
    heads: Callable[[argparse.Namespace], list[Any]] | None = None
    rule: FilterRule | None = None


# heads/modules.py holds the torch modules (imports torch): not a record module
_OPTIONS = ModuleRegistry("dask_clip.heads", "CLI", HeadOptions, skip=("modules", "cache"))


def head_options() -> list[HeadOptions]:
    """Every head's options, in priority order (found on first call, then kept)."""
    return _OPTIONS.all()


def filter_rules_of() -> list[FilterRule]:
    """The filter rules of every head, in order."""
    return [options.rule for options in head_options() if options.rule is not None]
