"""``dask-clip filter INPUT OUTPUT``: keep the rows whose scores pass thresholds, resumably."""

from __future__ import annotations

import argparse

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
    rules.add_argument(
        "--min-aesthetic",
        type=float,
        metavar="S",
        help="keep aesthetic_score >= S (LAION's predictor, ~1-10; LAION-Aesthetics used 5, 6, 6.5)",
    )
    rules.add_argument(
        "--max-nsfw", type=float, metavar="P", help="keep nsfw_score < P (a probability; NeMo Curator uses 0.5)"
    )
    rules.add_argument(
        "--min-clip-score",
        type=float,
        metavar="C",
        help="keep clip_score >= C (image-caption cosine; LAION-5B kept >= 0.28 with ViT-B/32)",
    )
    rules.add_argument(
        "--keep-label",
        action="append",
        metavar="LABEL",
        help="keep rows whose zero_shot_label is LABEL (repeat for several)",
    )
    cols = parser.add_argument_group("columns")
    cols.add_argument("--aesthetic-column", default="aesthetic_score", metavar="NAME")
    cols.add_argument("--nsfw-column", default="nsfw_score", metavar="NAME")
    cols.add_argument("--clip-score-column", default="clip_score", metavar="NAME")
    cols.add_argument("--label-column", default="zero_shot_label", metavar="NAME")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cluster import connect
    from ..filter import filter_parquet, filter_rules

    thresholds = dict(
        min_aesthetic=args.min_aesthetic,
        max_nsfw=args.max_nsfw,
        min_clip_score=args.min_clip_score,
        labels=args.keep_label,
        aesthetic_column=args.aesthetic_column,
        nsfw_column=args.nsfw_column,
        clip_score_column=args.clip_score_column,
        label_column=args.label_column,
    )
    if all(v is None for v in (args.min_aesthetic, args.max_nsfw, args.min_clip_score, args.keep_label)):
        raise ValueError("give at least one threshold: --min-aesthetic, --max-nsfw, --min-clip-score or --keep-label")
    filter_rules(**thresholds)  # a usage mistake is reported before a cluster starts
    with connect(**options.cluster_options(args)) as client:
        options.say(f"cluster: {options.describe(client)}")
        summary = filter_parquet(args.input, args.output, overwrite=args.overwrite, **thresholds)
    print(f"dask-clip filter: wrote {summary.written} partitions ({summary.skipped} already there) -> {args.output}")
    print(summary.to_string())
    return 0
