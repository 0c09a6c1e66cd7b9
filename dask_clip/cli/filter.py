"""``dask-clip filter INPUT OUTPUT``: keep the rows whose scores pass thresholds, resumably."""

from __future__ import annotations

import argparse

from ..heads.options import filter_rules_of
from . import options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "filter",
        parents=[common],
        help="keep the rows whose aesthetic, NSFW, CLIP-score or label pass thresholds (resumable)",
        description="Filter an embeddings folder (the output of `dask-clip embed` with scores) into OUTPUT, "
        "one file per input partition, and print how many rows each threshold removes. A row with no score "
        "(its image or caption failed) does not pass. Run the same command again to resume.",
    )
    parser.add_argument("input", metavar="INPUT", help="Parquet with score columns (the output of `dask-clip embed`)")
    parser.add_argument("output", metavar="OUTPUT", help="output folder")
    rules = parser.add_argument_group("thresholds (at least one)")
    cols = parser.add_argument_group("columns")
    for rule in filter_rules_of():  # each head's rule (dask_clip.heads.options)
        rule.add_arguments(rules, cols)
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..filter import filter_parquet, filter_rules
    from ..runtime.cluster import connect

    declared = filter_rules_of()
    thresholds = {}
    for rule in declared:
        thresholds[rule.keyword] = getattr(args, rule.keyword)
        thresholds[rule.column_keyword] = getattr(args, rule.column_keyword)
    if all(thresholds[rule.keyword] is None for rule in declared):
        flags = [rule.cli_flag for rule in declared]
        raise ValueError(f"give at least one threshold: {', '.join(flags[:-1])} or {flags[-1]}")
    filter_rules(**thresholds)  # a usage mistake is reported before a cluster starts
    with connect(**options.cluster_options(args)) as client:
        options.say(f"cluster: {options.describe(client)}")
        summary = filter_parquet(args.input, args.output, overwrite=args.overwrite, **thresholds)
    print(f"dask-clip filter: wrote {summary.written} partitions ({summary.skipped} already there) -> {args.output}")
    print(summary.to_string())
    return 0
