"""Option groups and helpers shared by the subcommands; choices and defaults come from the library."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import config
from ..validation import (
    CLUSTER_KINDS,
    DEFAULT_NUM_GPUS_PER_WORKER,
    DEVICES,
    ON_ERROR,
    PRECISIONS,
)

__all__ = [
    "add_cluster_options",
    "add_model_options",
    "add_progress",
    "cluster_options",
    "describe",
    "nonnegative_int",
    "positive_int",
    "progress",
    "say",
    "weights",
]

LOCAL_ONLY = ("n_workers", "threads_per_worker", "torch_threads")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _optional_address(text: str) -> str | None:
    return None if text.lower() in ("", "none", "off") else text


def _seconds_or_none(text: str) -> float | None:
    """argparse type: positive seconds, or ``none``/``0`` for no limit."""
    if text.lower() in ("none", "off", "0"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected positive seconds or 'none', got {text}")
    return value


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--scheduler-file``/``--scheduler-address``, or the local cluster's options."""
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
        choices=CLUSTER_KINDS,
        default="auto",
        help="local cluster kind: one worker per GPU (cuda, needs dask-cuda) or CPU workers (default: auto)",
    )
    group.add_argument(
        "--n-workers",
        type=positive_int,
        metavar="N",
        help="local workers (default: one per GPU, or one per 8 CPU cores)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=positive_int,
        metavar="N",
        help="tasks at once per local worker (default: 1/--num-gpus-per-worker on GPU, 1 on CPU)",
    )
    group.add_argument(
        "--torch-threads",
        type=positive_int,
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
    group.add_argument(
        "--worker-timeout",
        type=_seconds_or_none,
        default=config.get("watchdog.worker-timeout"),
        metavar="SECONDS",
        help="give up (exit 1, resumable) when the cluster has had no worker for this long; "
        "'none' waits forever (default: dask_clip.watchdog.worker-timeout, %(default)s)",
    )
    tls = parser.add_argument_group(
        "TLS", "Certificates for a TLS cluster, as `dask scheduler`/`dask worker` take them (docs/clusters.md)"
    )
    tls.add_argument("--tls-ca-file", metavar="FILE", help="CA certificate (PEM) that signed the cluster's")
    tls.add_argument("--tls-cert", metavar="FILE", help="this client's certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="this client's private key (PEM), unless it is in --tls-cert")


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments for :func:`dask_clip.runtime.cluster.connect`."""
    from ..runtime.cluster import tls_security

    existing = bool(args.scheduler_file or args.scheduler_address)
    security = tls_security(args.tls_ca_file, args.tls_cert, args.tls_key, local=not existing)
    common: dict[str, Any] = {"worker_timeout": args.worker_timeout}
    if security is not None:
        common["security"] = security
    if existing:
        local = [f"--{name.replace('_', '-')}" for name in LOCAL_ONLY if getattr(args, name)]
        if local or args.cluster != "auto":
            raise ValueError(
                f"{' '.join(local) or '--cluster'} only apply to a local cluster, "
                "not with --scheduler-file/--scheduler-address"
            )
        return {"scheduler_file": args.scheduler_file, "scheduler_address": args.scheduler_address, **common}
    options: dict[str, Any] = {
        "kind": args.cluster,
        "dashboard_address": args.dashboard_address,
        # the workers share this terminal: a failed task is the CLI's one line, its traceback is -v's
        "log_task_errors": bool(getattr(args, "verbose", False)),
        **common,
    }
    for name in LOCAL_ONLY:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "num_gpus_per_worker", None) is not None:
        options["num_gpus_per_worker"] = args.num_gpus_per_worker
    return options


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr: partitions, images, rate, ETA (default: on when stderr is a terminal)",
    )


def progress(args: argparse.Namespace) -> bool:
    """Whether to show the progress bar."""
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def add_model_options(
    parser: argparse.ArgumentParser, *, default_model: str, default_pretrained: str | None
) -> argparse._ArgumentGroup:
    """Which weights (``--model-dir``, or ``--model`` with ``--pretrained``) and how to run them."""
    group = parser.add_argument_group("model", "Which weights: --model-dir, or --model with --pretrained")
    group.add_argument(
        "--model-dir",
        metavar="DIR",
        help="weights in a local folder: open_clip's (open_clip_config.json + *.safetensors, e.g. from "
        "`huggingface-cli download laion/CLIP-ViT-L-14-laion2B-s32B-b82K --local-dir DIR`), a transformers CLIP "
        "folder, or NeMo Curator's model_dir (`dask-clip info --model-dir DIR` says which)",
    )
    group.add_argument(
        "--model",
        default=default_model,
        help=f"open_clip architecture, or hf-hub:ORG/NAME (default: {default_model})",
    )
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
        choices=PRECISIONS,
        default=config.get("precision"),
        help="auto: fp32 on CPU; fp16 weights on GPU (rows that overflow are redone in bf16); "
        "fp16/bf16: autocast; pure_fp16/pure_bf16: weights in that dtype",
    )
    group.add_argument("--device", choices=DEVICES, default="auto")
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=config.get("batch-size"),
        metavar="N",
        help="images per forward pass (default: dask_clip.batch-size, %(default)s)",
    )
    group.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=None,
        metavar="F",
        help="GPU share of one task: 0.25 runs 4 tasks per GPU worker sharing its model "
        f"(default: {DEFAULT_NUM_GPUS_PER_WORKER})",
    )
    return group


def add_on_error(group: argparse._ArgumentGroup) -> None:
    """``--on-error``."""
    group.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="null",
        help="a bad image gives a null embedding and a reason (null), or fails the job (raise)",
    )


def weights(args: argparse.Namespace) -> dict[str, Any]:
    """The weights options as :class:`~dask_clip.ImageEmbedder` keywords."""
    if args.random_weights and args.model_dir:
        raise ValueError("--random-weights contradicts --model-dir; pass one of them")
    if args.model_dir:
        return {"model_dir": args.model_dir}
    return {"model": args.model, "pretrained": None if args.random_weights else args.pretrained}


def describe(client: Any, args: argparse.Namespace | None = None) -> str:
    """One line about the cluster a client is connected to."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    off = args is not None and not (args.scheduler_file or args.scheduler_address) and args.dashboard_address is None
    dashboard = "off" if off else client.dashboard_link
    return f"{len(workers)} worker(s), {threads} thread(s), scheduler {client.scheduler.address}, dashboard {dashboard}"


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"dask-clip: {message}", file=sys.stderr, flush=True)
