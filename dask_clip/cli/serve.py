"""``dask-clip serve INDEX_DIR``: a local page to search and browse an index."""

from __future__ import annotations

import argparse

from . import options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve",
        parents=[common],
        help="a local web page to search and browse an index",
        description="Serve a search box, image upload and thumbnail grid for INDEX_DIR "
        "(needs the serve extra: pip install 'dask-clip[serve]').",
    )
    parser.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by `dask-clip index`")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=options.positive_int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; *.example.com patterns). By default "
        "only localhost, 127.0.0.1, [::1] and --host are answered, so that no other site can reach the "
        "index through DNS rebinding",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..index import serve

    serve(args.index_dir, host=args.host, port=args.port, allow_hosts=args.allow_host)
    return 0
