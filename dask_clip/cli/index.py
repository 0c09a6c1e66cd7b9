"""``dask-clip index EMBEDDINGS INDEX_DIR``: a kNN index of an embeddings folder, built on Dask."""

from __future__ import annotations

import argparse
import json

from . import options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..index.keys import DEFAULT_MAX_MEMORY

    parser = sub.add_parser(
        "index",
        parents=[common],
        help="build a kNN index (faiss) of an embeddings folder, for `search` and `serve`",
        description="Build a cosine-similarity index of EMBEDDINGS (the output of `dask-clip embed`) in "
        "INDEX_DIR. Run the same command again to resume; the previous index stays loadable until the "
        "new one is complete.",
    )
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="Parquet folder with an embedding column")
    parser.add_argument("index_dir", metavar="INDEX_DIR", help="output folder")
    parser.add_argument("--embedding-column", default="embedding", metavar="NAME")
    parser.add_argument(
        "--key-column",
        default="auto",
        metavar="NAME",
        help="the rows' key for `search --like` (default: the one `dask-clip embed` recorded, else key)",
    )
    parser.add_argument(
        "--image-column",
        default="auto",
        metavar="NAME",
        help="keep this image column beside the index, for the browse page (default: the one `dask-clip embed` "
        "recorded; 'none': no images)",
    )
    parser.add_argument(
        "--columns", nargs="+", metavar="NAME", help="columns kept beside the index (default: all but images)"
    )
    parser.add_argument(
        "--index-key",
        default="auto",
        metavar="KEY",
        help="faiss index factory string, or auto: Flat for small sets, IVF with PQ/HNSW for large ones",
    )
    parser.add_argument(
        "--max-memory",
        default=DEFAULT_MAX_MEMORY,
        metavar="SIZE",
        help=f"memory the index may take, e.g. 4GB (default: {DEFAULT_MAX_MEMORY})",
    )
    parser.add_argument("--nprobe", type=options.positive_int, metavar="N", help="default nprobe (default: tuned)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="build anew instead of resuming")
    options.add_progress(parser)
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..index import build
    from ..runtime.cluster import connect

    with connect(**options.cluster_options(args)) as client:
        options.say(f"cluster: {options.describe(client)}")
        summary = build(
            args.embeddings,
            args.index_dir,
            embedding_column=args.embedding_column,
            key_column=args.key_column,
            image_column=None if args.image_column.lower() == "none" else args.image_column,
            columns=args.columns,
            index_key=args.index_key,
            max_memory=args.max_memory,
            nprobe=args.nprobe,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=options.progress(args),
            client=client,
        )
    print(f"dask-clip index: -> {args.index_dir}")
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0
