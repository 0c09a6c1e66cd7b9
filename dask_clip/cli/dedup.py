"""``dask-clip dedup INPUT OUTPUT``: semantic dedup (SemDeDup) of an embeddings folder."""

from __future__ import annotations

import argparse

from ..validation import KEEP_RULES, check_memory
from . import options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "dedup",
        parents=[common],
        help="semantic dedup (SemDeDup) of an embeddings Parquet dataset",
        description="Flag near-duplicates: k-means, then cosine similarity within clusters. "
        "Run the same command again to resume: finished files are kept.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="Parquet with an embedding column (the output of `dask-clip embed`)"
    )
    parser.add_argument("output", metavar="OUTPUT", help="output folder")
    parser.add_argument(
        "--eps", type=float, default=0.01, help="duplicate when cosine similarity >= 1 - eps (default: 0.01)"
    )
    parser.add_argument(
        "--n-clusters", type=options.positive_int, default=1000, metavar="K", help="k-means clusters (default: 1000)"
    )
    parser.add_argument(
        "--max-train-rows",
        type=options.positive_int,
        metavar="N",
        help="k-means training sample (default: 256 per cluster, capped by --max-memory); more rows give "
        "smoother centroids and fewer border rows",
    )
    parser.add_argument("--embedding-column", default="embedding", metavar="NAME")
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="column naming rows in duplicate_of (default: the key column `dask-clip embed` recorded, else the "
        "row number)",
    )
    parser.add_argument("--which-to-keep", choices=KEEP_RULES, default="hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-duplicates", action="store_true", help="write only the rows kept")
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget of one task, e.g. 4GiB: bounds the default k-means sample, the assignment blocks and "
        "the per-cluster blocks; a cluster or a partition's border rows that cannot fit is an error "
        "(default: no budget)",
    )
    parser.add_argument(
        "--plain-semdedup",
        action="store_true",
        help="compare rows only within their own cluster, as SemDeDup and NeMo Curator do (misses pairs split "
        "across cluster borders; default: border-aware, docs/dedup.md)",
    )
    parser.add_argument(
        "--border-margin",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of the guaranteed border margin (1.0 finds every pair within eps; less is cheaper)",
    )
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cluster import connect

    try:
        from ..dedup import dedup_parquet
        from ..dedup.parquet import check_dedup_paths
    except ImportError as err:
        raise ImportError(f"dask-clip dedup needs the dedup extra ({err}): pip install 'dask-clip[dedup]'") from err
    max_memory = check_memory("--max-memory", args.max_memory)  # before a cluster starts
    check_dedup_paths(args.input, args.output)  # OUTPUT = INPUT: refused now, not after the whole dedup
    id_column = args.id_column
    if id_column is None:  # the key column the embeddings record (key, or a folder's file path)
        from ..file_metadata import read_file_metadata

        id_column = read_file_metadata(args.input).get("key_column")
    with connect(**options.cluster_options(args)) as client:
        options.say(f"cluster: {options.describe(client, args)}")
        summary = dedup_parquet(
            args.input,
            args.output,
            eps=args.eps,
            n_clusters=args.n_clusters,
            max_train_rows=args.max_train_rows,
            embedding_column=args.embedding_column,
            id_column=id_column,
            drop_duplicates=args.drop_duplicates,
            overwrite=args.overwrite,
            which_to_keep=args.which_to_keep,
            seed=args.seed,
            max_memory=max_memory,
            border_aware=not args.plain_semdedup,
            border_margin=args.border_margin,
        )
    print(f"dask-clip dedup: -> {args.output}")
    print(summary.to_string())
    return 0
