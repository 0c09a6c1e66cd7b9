"""``dask-clip info``: versions, CPU/GPU devices, usable GPU libraries."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("info", parents=[common], help="versions, CPU/GPU devices, usable GPU libraries")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..info import environment_info, format_info

    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
