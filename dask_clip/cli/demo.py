"""``dask-clip demo``: embed and dedup the bundled sample on a local cluster."""

from __future__ import annotations

import argparse
import sys

from . import options

__all__ = ["add_parser", "run"]

EXIT_USAGE = 2


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "demo",
        parents=[common],
        help="embed and dedup the bundled sample on a local cluster",
        description="The whole job on 319 bundled images with planted near-duplicates.",
    )
    parser.add_argument(
        "--output", default="dask-clip-demo", metavar="DIR", help="output folder (default: ./dask-clip-demo)"
    )
    options.add_model_options(parser, default_model="ViT-B-32", default_pretrained=None)
    parser.add_argument(
        "--eps", type=float, default=None, help="dedup threshold (default: 0.01; 0.001 with --random-weights)"
    )
    parser.add_argument("--n-clusters", type=options.positive_int, default=4, metavar="K")
    options.add_progress(parser)
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import NEEDS_WEIGHTS, run_demo

    if args.model_dir is None and args.pretrained is None and not args.random_weights:
        print(f"dask-clip demo: {NEEDS_WEIGHTS}", file=sys.stderr)
        return EXIT_USAGE
    run_demo(
        args.output,
        model_dir=args.model_dir,
        model=args.model,
        pretrained=args.pretrained,
        random_weights=args.random_weights,
        eps=args.eps,
        n_clusters=args.n_clusters,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        progress=options.progress(args),
        connect_options=options.cluster_options(args),
    )
    return 0
