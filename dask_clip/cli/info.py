"""``dask-clip info``: versions, CPU/GPU devices, usable GPU libraries; ``--model-dir``: what a folder holds."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("info", parents=[common], help="versions, CPU/GPU devices, usable GPU libraries")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--config", action="store_true", help="only the effective dask_clip.* settings of dask.config (no torch import)"
    )
    parser.add_argument(
        "--model-dir",
        metavar="DIR",
        help="report what DIR holds instead: open_clip local-dir (CLIP, SigLIP, EVA-02, MobileCLIP ...), "
        "transformers CLIP or SigLIP folder, or NeMo Curator model_dir",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.info import environment_info, format_info

    if args.config:
        from .. import config
        from ..runtime.info import format_config

        settings = config.effective()
        print(json.dumps(settings, indent=2) if args.json else format_config(settings))
        return 0
    if args.model_dir is not None:
        from ..models.families import detect_model_dir

        found = detect_model_dir(args.model_dir).describe()
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            print("\n".join(f"{key:<12}{value}" for key, value in found.items()))
        return 0
    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
