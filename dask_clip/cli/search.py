"""``dask-clip search INDEX_DIR (--text T | --image FILE | --like KEY)``: nearest rows of an index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "search",
        parents=[common],
        help="search an index by text, image or row key",
        description="Print the K rows of INDEX_DIR most similar to each query, as a table, JSON or an HTML page.",
    )
    parser.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by `dask-clip index`")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", nargs="+", metavar="TEXT", help="text queries (the model's text tower)")
    query.add_argument("--image", nargs="+", metavar="FILE", help="image files or URLs, embedded like any row")
    query.add_argument("--like", nargs="+", metavar="KEY", help="rows of the index, by their key")
    parser.add_argument("-k", type=options.positive_int, default=20, help="results per query (default: 20)")
    parser.add_argument("--nprobe", type=options.positive_int, metavar="N", help="lists searched (default: tuned)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON records on stdout")
    output.add_argument("--html", metavar="FILE", help="an HTML page of thumbnails")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..index import load
    from ..index.report import results_html, results_records

    index = load(args.index_dir)
    kwargs = {"nprobe": args.nprobe} if args.nprobe else {}
    if args.text:
        queries, results = args.text, index.search_text(args.text, args.k, **kwargs)
    elif args.image:
        queries, results = args.image, index.search_image(args.image, args.k, **kwargs)
    else:
        queries, results = args.like, index.search_like(args.like, args.k, **kwargs)
    if args.json:
        print(json.dumps(results_records(results), indent=2, default=str))
    elif args.html:
        Path(args.html).write_text(results_html(results, index, queries=list(queries)))
        print(f"dask-clip search: {len(results)} results -> {args.html}")
    else:
        shown = results.drop(columns=[c for c in results.columns if results[c].dtype == object and c != "caption"])
        print(shown.to_string(index=False, max_colwidth=60))
    return 0
