"""``dask-clip``: the command line, a thin layer over the public API.

::

    dask-clip embed INPUT OUTPUT [--model-dir DIR | --model M --pretrained TAG] [...]
    dask-clip filter INPUT OUTPUT --min-aesthetic 5 --max-nsfw 0.5 --min-clip-score 0.28 [...]
    dask-clip dedup INPUT OUTPUT --eps 0.01 --n-clusters K [...]
    dask-clip index EMBEDDINGS INDEX_DIR [--index-key auto] [--max-memory 4GB]
    dask-clip search INDEX_DIR (--text T | --image FILE | --like KEY) [-k 20] [--json | --html FILE]
    dask-clip serve INDEX_DIR [--host 127.0.0.1] [--port 8000]
    dask-clip demo --random-weights
    dask-clip info [--model-dir DIR]

One module per subcommand (``add_parser`` + ``run``), registered in :data:`SUBCOMMANDS`; each
parses its arguments into the same objects a Python user would build
(:class:`~dask_clip.ImageEmbedder`, :func:`~dask_clip.local_cluster` options) and calls the
public functions. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
#: Subcommand modules of this package, in the order ``--help`` lists them.
SUBCOMMANDS = ("embed", "filter", "dedup", "index", "search", "serve", "demo", "info")
#: Subcommands whose local workers run a model: their workers are forked from a server that
#: imports torch at the command's start (:mod:`dask_clip.runtime.forkserver`).
FORKED_WORKERS = ("embed", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The ``dask-clip`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="dask-clip", description="CLIP image embeddings for Dask DataFrames.")
    parser.add_argument("--version", action="version", version=f"dask-clip {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log per-partition images/s on the workers, and more"
    )
    # Also accepted after the subcommand; SUPPRESS keeps a subparser from resetting the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub, common)
    return parser


def _starts_model_workers(argv: Sequence[str]) -> bool:
    """Whether ``dask-clip ARGV`` looks like a subcommand that starts a local cluster of model
    workers, told from the raw arguments, before the parser (whose imports take a second) runs.
    The parsed arguments confirm it (:func:`_confirm`)."""
    words = [w for w in argv if w not in ("-v", "--verbose")]
    if not words or words[0] not in FORKED_WORKERS:
        return False
    stop = ("-h", "--help", "--version", "--scheduler-file", "--scheduler-address")
    return not any(w.split("=", 1)[0] in stop for w in words)


def _confirm(args: argparse.Namespace) -> bool:
    """The parsed arguments: a subcommand of :data:`FORKED_WORKERS` on a local cluster."""
    existing = getattr(args, "scheduler_file", None) or getattr(args, "scheduler_address", None)
    return args.command in FORKED_WORKERS and hasattr(args, "cluster") and not existing


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dask-clip``; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted).

    Every failure ends in one line on stderr, ``dask-clip CMD: error: <what> — <what to do>``
    (:func:`~dask_clip.cli.failures.explain`); ``-v`` prints the traceback too.
    """
    if argv is None:  # this process is the command: no collection of its objects at exit
        # (finalising pandas, pyarrow and distributed otherwise takes 0.6-0.7 s on 2 cores)
        atexit.register(gc.freeze)  # registered first, so it runs last
    from .failures import explain
    from .options import say

    workers = contextlib.ExitStack()
    if _starts_model_workers(sys.argv[1:] if argv is None else argv):
        from ..runtime.forkserver import forked_workers

        # First, so that the local workers' imports (torch ...) run while this process starts up.
        workers.enter_context(forked_workers())
    try:
        args = build_parser().parse_args(argv)
    except BaseException:  # a usage error (SystemExit), --help
        workers.close()
        raise
    if not _confirm(args):
        workers.close()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        import distributed  # noqa: F401  - it sets its loggers' levels on import; override after

        # A local cluster's scheduler and nanny live in this process and log every client and
        # worker event at INFO; the p2p shuffle logs every shuffle (dedup) at WARNING.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    try:
        with workers:
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        say("interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.verbose:
            traceback.print_exception(err, file=sys.stderr)
        print(f"dask-clip {args.command}: error: {explain(err)}", file=sys.stderr)
        return EXIT_ERROR
