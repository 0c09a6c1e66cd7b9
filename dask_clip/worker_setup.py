"""Per-worker setup for CLIP inference: torch's CPU thread count.

The nanny starts every worker with ``OMP_NUM_THREADS=1`` (``distributed.nanny.pre-spawn-environ``),
so torch would run single-threaded on CPU unless each worker sets its own thread count. The
setup reaches every worker, including those that join later and those a nanny restarts, by
one of two routes (``Client.run`` reaches neither):

- :class:`WorkerSetup`, a worker plugin: ``client.register_plugin(WorkerSetup())``. The
  scheduler keeps it and replays it on new and restarted workers;
  :func:`dask_clip.local_cluster` registers it for you.
- This module as a preload, for workers started from the command line::

      dask worker --scheduler-file sched.json --preload dask_clip.worker_setup
      DASK_CLIP_TORCH_THREADS=8 dask worker --scheduler-file sched.json --preload dask_clip.worker_setup
      dask worker tcp://10.0.0.5:8786 --preload dask_clip.worker_setup --torch-threads 8

  (``--torch-threads`` after the preload works only when the scheduler address is given
  positionally: with ``--scheduler-file``, ``dask worker`` takes the option's value for the
  address. Use the environment variable there.)

The GPU allocator is dask-cuda's job: ``LocalCUDACluster(rmm_allocator_external_lib_list=...)``
and ``dask cuda worker --set-rmm-allocator-for-libs cupy`` install it through dask-cuda's own
``RMMSetup`` worker plugin, which also survives restarts. torch stays on its own caching
allocator (docs/gpu.md says why).

Importing this module is cheap and has no side effects: ``dask worker`` imports it in its
own process to read the ``--torch-threads`` option.
"""

from __future__ import annotations

import logging
import os
import threading

import click
from distributed import WorkerPlugin

__all__ = [
    "TORCH_THREADS_ENV",
    "WorkerSetup",
    "configure_worker",
    "cpu_count",
    "dask_setup",
    "default_torch_threads",
    "keep_freed_memory",
    "preload_model",
    "release_freed_memory",
]

logger = logging.getLogger(__name__)
TORCH_THREADS_ENV = "DASK_CLIP_TORCH_THREADS"


def cpu_count() -> int:
    """Cores this process may use (affinity-aware: dask-cuda pins each GPU worker to its cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_torch_threads(task_threads: int = 1) -> int:
    """Torch intra-op threads for a worker running ``task_threads`` tasks at once.

    ``$DASK_CLIP_TORCH_THREADS`` when set; otherwise the worker's usable cores shared among its
    task threads. Several worker processes on one host should each be given their share
    (:func:`dask_clip.local_cluster` does this).
    """
    configured = os.environ.get(TORCH_THREADS_ENV)
    if configured:
        try:
            threads = int(configured)
        except ValueError:
            raise ValueError(f"${TORCH_THREADS_ENV}={configured!r}; expected a positive integer") from None
        if threads < 1:
            raise ValueError(f"${TORCH_THREADS_ENV}={configured!r}; expected a positive integer")
        return threads
    return max(1, cpu_count() // max(1, int(task_threads)))


class _NoTaskFailures(logging.Filter):
    """Drops the worker's "Compute Failed" records (a task's exception and traceback): the
    client gets the same exception, and the CLI says it in one line (``-v`` shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


_TASK_FAILURE_FILTER = _NoTaskFailures()


def configure_worker(worker: object | None, torch_threads: int | None = None, *, log_task_errors: bool = True) -> int:
    """Apply dask_clip's setup to the current process; return torch's thread count.

    Parameters
    ----------
    worker
        The ``distributed.Worker`` (its task-thread count sizes the default), or None.
    torch_threads
        Torch intra-op threads; default :func:`default_torch_threads`.
    log_task_errors
        Whether the worker logs a failed task's exception and traceback (``distributed``'s
        "Compute Failed" lines); the CLI turns them off on its own local cluster unless ``-v``.
    """
    # here, not at import: `dask worker` imports this module in its own process
    from .models.cache import set_torch_threads

    if torch_threads is None:
        state = getattr(worker, "state", None)
        torch_threads = default_torch_threads(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1)
    # Remembered for the task threads too (OpenMP's setting is per thread; see models.py).
    set_torch_threads(int(torch_threads))
    keep_freed_memory()
    _log_to_stderr()
    worker_log = logging.getLogger("distributed.worker")
    if log_task_errors:
        worker_log.removeFilter(_TASK_FAILURE_FILTER)
    else:
        worker_log.addFilter(_TASK_FAILURE_FILTER)
    logger.debug("dask_clip worker setup: torch threads=%d", torch_threads)
    return int(torch_threads)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing every large block back at once.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's
    adaptive mmap threshold: every allocation over 128 KiB is then mmap'd and unmapped on free,
    so each of torch's activation tensors is page-faulted in anew on every forward pass —
    323,000 minor faults per ViT-B-32 batch of 32, about 20 % of a CPU worker's time (measured:
    benchmarks/README.md). Allocations up to 32 MiB come from the heap again and up to 256 MiB of
    free heap is kept; memory is still returned beyond that. Linux/glibc only; a no-op elsewhere.

    Returns
    -------
    bool
        Whether the setting was applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Hand memory that glibc keeps after frees back to the system (``malloc_trim(0)``).

    Called after an image whose decoded pixels are large (:data:`dask_clip.image.prepare.RELEASE_AFTER_BYTES`):
    its resize temporaries, freed from the heaps of several threads, would otherwise stay mapped —
    measured, about 1 GiB per decode thread after a 9000 x 9900 PNG. A few milliseconds, only for
    such images. Linux/glibc only; a no-op elsewhere.

    Returns
    -------
    bool
        Whether glibc was asked.
    """
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _log_to_stderr() -> None:
    """Show dask_clip's INFO lines (``ImageEmbedder(verbose=True)``) in the worker's log.

    Worker processes configure only distributed's own loggers; without a handler here the
    per-partition lines of a verbose embedder would go nowhere.
    """
    package = logging.getLogger("dask_clip")
    package.setLevel(logging.INFO)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        package.addHandler(handler)
        package.propagate = False  # a root handler added later must not print the lines twice


class WorkerSetup(WorkerPlugin):
    """Worker plugin: set torch's CPU thread count on every worker, restarted ones included.

    Parameters
    ----------
    torch_threads
        Torch intra-op threads per worker; default: ``$DASK_CLIP_TORCH_THREADS`` or the
        worker's cores divided by its task threads.
    log_task_errors
        False: the workers do not log failed tasks' tracebacks (the client still gets the
        exceptions).

    Examples
    --------
    >>> client.register_plugin(WorkerSetup(torch_threads=8))   # doctest: +SKIP
    """

    idempotent = True
    name = "dask-clip-worker-setup"

    def __init__(self, torch_threads: int | None = None, *, log_task_errors: bool = True) -> None:
        if torch_threads is not None and (isinstance(torch_threads, bool) or int(torch_threads) < 1):
            raise ValueError(f"torch_threads must be a positive int or None, got {torch_threads!r}")
        self.torch_threads = None if torch_threads is None else int(torch_threads)
        self.log_task_errors = bool(log_task_errors)

    def setup(self, worker: object) -> None:
        """Runs on the worker's event loop: cheap work only (no model loading)."""
        configure_worker(worker, self.torch_threads, log_task_errors=getattr(self, "log_task_errors", True))


def preload_model(spec: object) -> None:
    """Start loading ``spec``'s model in a background thread of this process, and return.

    Run on every worker by the :class:`~dask_clip.runtime.worker.ModelPreload` plugin (at each
    worker's start, restarts included) as soon as a job's model is known, so that the load
    overlaps the client's planning instead of starting with the first task; that task then
    waits for it (:func:`dask_clip.models.get_model` loads once).
    A load that fails is left to the first task, which raises the error where it is reported.
    """

    def load() -> None:
        from .models.cache import get_model

        try:
            get_model(spec)  # type: ignore[arg-type]
        except Exception:
            logger.debug("dask_clip: preloading the model failed; the first task will say why", exc_info=True)

    threading.Thread(target=load, name="dask-clip-preload", daemon=True).start()


@click.command()
@click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    default=None,
    envvar=TORCH_THREADS_ENV,
    help="Torch CPU threads per worker (default: the worker's cores / --nthreads).",
)
def dask_setup(worker: object, torch_threads: int | None) -> None:
    """``--preload dask_clip.worker_setup`` entry point; runs at every worker (re)start."""
    configure_worker(worker, torch_threads)
