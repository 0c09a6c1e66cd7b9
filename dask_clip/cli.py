"""``dask-clip``: the command line, a thin layer over the public API.

::

    dask-clip embed INPUT OUTPUT [--model-dir DIR | --model M --pretrained TAG] [...]
    dask-clip dedup INPUT OUTPUT --eps 0.01 --n-clusters K [...]
    dask-clip demo --random-weights
    dask-clip info

Each subcommand parses its arguments into the same objects a Python user would build
(:class:`~dask_clip.ImageEmbedder`, :func:`~dask_clip.local_cluster` options) and calls the
public functions. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _optional_address(text: str) -> str | None:
    return None if text.lower() in ("", "none", "off") else text


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster", "An existing cluster (--scheduler-file / --scheduler-address), else a local one"
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler-file", metavar="FILE", help="JSON file written by `dask scheduler --scheduler-file`"
    )
    where.add_argument(
        "--scheduler-address", metavar="ADDR", help="address of a running scheduler, e.g. tcp://10.0.0.5:8786"
    )
    group.add_argument(
        "--cluster",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="local cluster kind: one worker per GPU (cuda, needs dask-cuda) or CPU workers (default: auto)",
    )
    group.add_argument(
        "--n-workers",
        type=_positive_int,
        metavar="N",
        help="local workers (default: one per GPU, or one per 8 CPU cores)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        metavar="N",
        help="tasks at once per local worker (default: 1/--num-gpus-per-worker on GPU, 1 on CPU)",
    )
    group.add_argument(
        "--torch-threads",
        type=_positive_int,
        metavar="N",
        help="torch CPU threads per local worker (default: the cores shared among workers)",
    )
    group.add_argument(
        "--dashboard-address",
        type=_optional_address,
        default="127.0.0.1:8787",
        metavar="ADDR",
        help="local dashboard, on localhost by default; ':8787' exposes it, 'none' turns the dashboard off",
    )


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments for :func:`dask_clip.cluster.connect`."""
    if args.scheduler_file or args.scheduler_address:
        local = [
            f"--{name.replace('_', '-')}"
            for name in ("n_workers", "threads_per_worker", "torch_threads")
            if getattr(args, name)
        ]
        if local or args.cluster != "auto":
            raise ValueError(
                f"{' '.join(local) or '--cluster'} only apply to a local cluster, "
                "not with --scheduler-file/--scheduler-address"
            )
        return {"scheduler_file": args.scheduler_file, "scheduler_address": args.scheduler_address}
    options: dict[str, Any] = {"kind": args.cluster, "dashboard_address": args.dashboard_address}
    for name in ("n_workers", "threads_per_worker", "torch_threads"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "num_gpus_per_worker", None) is not None:
        options["num_gpus_per_worker"] = args.num_gpus_per_worker
    return options


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr: partitions, images, rate, ETA (default: on when stderr is a terminal)",
    )


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _add_model_options(parser: argparse.ArgumentParser, *, default_model: str, default_pretrained: str | None) -> None:
    group = parser.add_argument_group("model", "Which weights: --model-dir, or --model with --pretrained")
    group.add_argument(
        "--model-dir",
        metavar="DIR",
        help="open_clip weights in a local folder (open_clip_config.json + *.safetensors), "
        "e.g. from `huggingface-cli download laion/CLIP-ViT-L-14-laion2B-s32B-b82K --local-dir DIR`",
    )
    group.add_argument("--model", default=default_model, help=f"open_clip architecture (default: {default_model})")
    group.add_argument(
        "--pretrained",
        default=default_pretrained,
        metavar="TAG",
        help="open_clip pretrained tag or checkpoint file"
        + (f" (default: {default_pretrained})" if default_pretrained else ""),
    )
    group.add_argument(
        "--random-weights", action="store_true", help="seeded random weights, no download (tests, benchmarks)"
    )
    group.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="auto: fp32 on CPU, bf16 (else fp16) on GPU",
    )
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    group.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="images per forward pass (default: 32)"
    )
    group.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=None,
        metavar="F",
        help="GPU share of one task: 0.25 runs 4 tasks per GPU worker sharing its model (default: 0.25)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``dask-clip`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="dask-clip", description="CLIP image embeddings for Dask DataFrames.")
    parser.add_argument("--version", action="version", version=f"dask-clip {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log per-partition images/s on the workers, and more"
    )
    # Also accepted after the subcommand; SUPPRESS keeps a subparser from resetting the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = sub.add_parser(
        "embed",
        parents=[common],
        help="append CLIP embeddings to images, write Parquet (resumable)",
        description="Embed INPUT's images and write OUTPUT/part-NNNNN.parquet, one file per partition. "
        "Run the same command again to resume: finished files are kept.",
    )
    embed.add_argument(
        "input",
        metavar="INPUT",
        help="Parquet file, folder, glob or fsspec URL (img2dataset output), or a folder of images",
    )
    embed.add_argument("output", metavar="OUTPUT", help="output folder (local or fsspec URL)")
    _add_model_options(embed, default_model="ViT-L-14", default_pretrained="openai")
    cols = embed.add_argument_group("columns")
    cols.add_argument(
        "--image-column",
        metavar="NAME",
        help="column with the images (default: jpg, image, ... or the only binary column; 'path' for image files)",
    )
    cols.add_argument("--image-kind", choices=("auto", "bytes", "path", "pixels"), default="auto")
    cols.add_argument(
        "--output-column",
        default="embedding",
        metavar="NAME",
        help="list<float32> embedding column (default: embedding)",
    )
    cols.add_argument(
        "--error-column",
        default="embedding_error",
        metavar="NAME",
        help="why a row has no embedding, else null (default: embedding_error)",
    )
    cols.add_argument("--remove-image-data", action="store_true", help="drop the image column from the output")
    cols.add_argument(
        "--on-error",
        choices=("null", "raise"),
        default="null",
        help="a bad image gives a null embedding and a reason (null), or fails the job (raise)",
    )
    part = embed.add_argument_group("partitions and output")
    part.add_argument(
        "--partition-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="image files per partition, for a folder of images",
    )
    part.add_argument("--split-row-groups", action="store_true", help="one partition per Parquet row group")
    part.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    part.add_argument("--retries", type=_nonnegative_int, default=0, metavar="N", help="retries of a failed partition")
    _add_progress(embed)
    _add_cluster_options(embed)
    embed.set_defaults(func=_embed)

    dedup = sub.add_parser(
        "dedup",
        parents=[common],
        help="semantic dedup (SemDeDup) of an embeddings Parquet dataset",
        description="Flag near-duplicates: k-means, then cosine similarity within clusters.",
    )
    dedup.add_argument(
        "input", metavar="INPUT", help="Parquet with an embedding column (the output of `dask-clip embed`)"
    )
    dedup.add_argument("output", metavar="OUTPUT", help="output folder")
    dedup.add_argument(
        "--eps", type=float, default=0.01, help="duplicate when cosine similarity >= 1 - eps (default: 0.01)"
    )
    dedup.add_argument(
        "--n-clusters", type=_positive_int, default=1000, metavar="K", help="k-means clusters (default: 1000)"
    )
    dedup.add_argument("--embedding-column", default="embedding", metavar="NAME")
    dedup.add_argument(
        "--id-column", metavar="NAME", help="column naming rows in duplicate_of (default: the row number)"
    )
    dedup.add_argument("--which-to-keep", choices=("hard", "easy", "random"), default="hard")
    dedup.add_argument("--seed", type=int, default=0)
    dedup.add_argument("--drop-duplicates", action="store_true", help="write only the rows kept")
    dedup.add_argument("--overwrite", action="store_true")
    _add_cluster_options(dedup)
    dedup.set_defaults(func=_dedup)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="embed and dedup the bundled sample on a local cluster",
        description="The whole job on 319 bundled images with planted near-duplicates.",
    )
    demo.add_argument(
        "--output", default="dask-clip-demo", metavar="DIR", help="output folder (default: ./dask-clip-demo)"
    )
    _add_model_options(demo, default_model="ViT-B-32", default_pretrained=None)
    demo.add_argument(
        "--eps", type=float, default=None, help="dedup threshold (default: 0.01; 0.001 with --random-weights)"
    )
    demo.add_argument("--n-clusters", type=_positive_int, default=4, metavar="K")
    _add_progress(demo)
    _add_cluster_options(demo)
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", parents=[common], help="versions, CPU/GPU devices, usable GPU libraries")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    return parser


# -- subcommands -----------------------------------------------------------------------------


def _weights(args: argparse.Namespace) -> dict[str, Any]:
    if args.random_weights and args.model_dir:
        raise ValueError("--random-weights contradicts --model-dir; pass one of them")
    if args.model_dir:
        return {"model_dir": args.model_dir}
    return {"model": args.model, "pretrained": None if args.random_weights else args.pretrained}


def _embed(args: argparse.Namespace) -> int:
    from .cluster import connect
    from .embedder import ImageEmbedder
    from .jobs import prepare_embed, run_embed

    embedder = ImageEmbedder(
        **_weights(args),
        precision=args.precision,
        device=args.device,
        model_inference_batch_size=args.batch_size,
        verbose=args.verbose,
        remove_image_data=args.remove_image_data,
        image_kind=args.image_kind,
        output_column=args.output_column,
        error_column=args.error_column,
        on_error=args.on_error,
        **({"num_gpus_per_worker": args.num_gpus_per_worker} if args.num_gpus_per_worker is not None else {}),
    )
    job = prepare_embed(
        args.input,
        args.output,
        embedder,
        image_column=args.image_column,
        partition_size=args.partition_size,
        split_row_groups=args.split_row_groups,
        overwrite=args.overwrite,
    )
    total = job.frame.npartitions
    if not job.todo:
        print(f"dask-clip embed: all {total} partitions of {args.output} are already written; nothing to do")
        return 0
    _say(f"{len(job.todo)} of {total} partitions to write" + ("" if len(job.todo) == total else " (resuming)"))
    with connect(**_cluster_options(args)) as client:
        _say(f"cluster: {_describe(client)}")
        summary = run_embed(
            job, overwrite=args.overwrite, client=client, progress=_progress(args), retries=args.retries
        )
    print(
        f"dask-clip embed: wrote {summary.written} partitions ({summary.skipped} already there), "
        f"{summary.rows} images, {summary.counts.get('errors', 0)} errors, {summary.seconds:.1f}s, "
        f"{summary.rows_per_second:.1f} images/s -> {args.output}"
    )
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from .cluster import connect

    try:
        from .dedup import dedup_parquet
    except ImportError as err:
        raise ImportError(f"dask-clip dedup needs the dedup extra ({err}): pip install 'dask-clip[dedup]'") from err
    with connect(**_cluster_options(args)) as client:
        _say(f"cluster: {_describe(client)}")
        summary = dedup_parquet(
            args.input,
            args.output,
            eps=args.eps,
            n_clusters=args.n_clusters,
            embedding_column=args.embedding_column,
            id_column=args.id_column,
            drop_duplicates=args.drop_duplicates,
            overwrite=args.overwrite,
            which_to_keep=args.which_to_keep,
            seed=args.seed,
        )
    print(f"dask-clip dedup: -> {args.output}")
    print(summary.to_string() if hasattr(summary, "to_string") else summary)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.model_dir is None and args.pretrained is None and not args.random_weights:
        from .demo import NEEDS_WEIGHTS

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
        progress=_progress(args),
        connect_options=_cluster_options(args),
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from .info import environment_info, format_info

    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _describe(client: Any) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return (
        f"{len(workers)} worker(s), {threads} thread(s), scheduler {client.scheduler.address}, "
        f"dashboard {client.dashboard_link}"
    )


def _say(message: str) -> None:
    print(f"dask-clip: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dask-clip``; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    from .errors import DaskClipError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        import distributed  # noqa: F401  - it sets its loggers' levels on import; override after

        # A local cluster's scheduler and nanny live in this process and log every client and
        # worker event at INFO; the p2p shuffle logs every shuffle (dedup) at WARNING.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, ImportError, DaskClipError) as err:
        print(f"dask-clip {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
