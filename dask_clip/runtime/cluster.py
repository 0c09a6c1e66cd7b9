"""Local clusters sized for CLIP inference, and a way to reach an existing one.

:func:`local_cluster` starts a dask-cuda ``LocalCUDACluster`` (one worker per visible GPU) when
GPUs and dask-cuda are present, and a distributed ``LocalCluster`` sized for the cores
otherwise. Worker setup (torch threads) is the :class:`~dask_clip.worker_setup.WorkerSetup`
plugin, and the GPU allocator is dask-cuda's ``RMMSetup`` plugin, so both reach workers that
a nanny restarts. :func:`plan_local_cluster` holds every decision, without starting anything.
:func:`connect` reaches an existing cluster or starts a local one, with TLS where asked
(:func:`tls_security`), and watches that the cluster keeps a worker
(:func:`~dask_clip.runtime.watchdog.watch_workers`).

Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import dask

from ..validation import CLUSTER_KINDS, DEFAULT_NUM_GPUS_PER_WORKER, check_choice, check_gpu_share
from ..worker_setup import WorkerSetup, cpu_count
from .tls import _check_tls, _local_security, tls_security

__all__ = [
    "CLUSTER_KINDS",
    "ClusterOptions",
    "ClusterPlan",
    "connect",
    "connect_early",
    "cpu_count",
    "cuda_context_exists",
    "gpu_count",
    "local_cluster",
    "no_gpu_device_files",
    "plan_local_cluster",
    "stop_workers_now",
    "threads_per_gpu_worker",
    "tls_security",
]

logger = logging.getLogger(__name__)
DEFAULT_DASHBOARD = "127.0.0.1:8787"
# distributed's scheduler always starts its HTTP server (on :8787 when given no address); with
# the dashboard off it gets a random localhost port and no routes: nothing is served.
_NO_DASHBOARD = "127.0.0.1:0"
# One model per process: on CPU prefer few processes, each with many torch threads.
CORES_PER_CPU_WORKER = 8


def dask_cuda_problem() -> str | None:
    """Why dask-cuda cannot be used here (None when it imports).

    Installed is not enough: a dask-cuda whose CUDA bindings do not match the machine (an
    incompatible ``cuda-core``, say) raises on import, and a local cluster must then fall back
    to CPU workers with a warning instead of failing. Importing ``dask_cuda.utils`` creates no
    CUDA context.
    """
    if importlib.util.find_spec("dask_cuda") is None:
        return "dask-cuda is not installed"
    try:
        import dask_cuda.utils  # noqa: F401
    except Exception as err:
        return f"dask-cuda is installed but does not import ({type(err).__name__}: {err})"
    return None


def has_dask_cuda() -> bool:
    """Whether dask-cuda is installed and imports."""
    return dask_cuda_problem() is None


def no_gpu_device_files() -> bool:
    """True where no GPU can be visible to CUDA, seen without importing anything: Linux without
    the device files of NVIDIA's driver (``/dev/nvidia0``...), WSL's (``/dev/dxg``) or ROCm's
    (``/dev/kfd``), or macOS. Elsewhere (Windows) False: only torch can tell."""
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg") or os.path.exists("/dev/kfd"))
    return False


def gpu_count() -> int:
    """GPUs visible to this process (``CUDA_VISIBLE_DEVICES`` honoured), without a CUDA context.

    0 at once where the machine has no GPU device files (:func:`no_gpu_device_files`): counting
    through torch would import it (2.5-6 s on 2 cores), in the process that starts the local
    cluster, before any worker starts. Otherwise dask-cuda counts through NVML, or torch's device
    count, which initialises the driver but creates no context.
    """
    if no_gpu_device_files():
        return 0
    if has_dask_cuda():
        try:
            from dask_cuda.utils import get_n_gpus

            return int(get_n_gpus())
        except Exception:  # no driver / NVML: treat as no GPU, as torch would
            return 0
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        return int(torch.cuda.device_count())
    return 0


def _cupy_usable() -> bool:
    """Whether CuPy imports here (importing it creates no CUDA context)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy  # noqa: F401
    except Exception:  # a build for another CUDA major, a missing runtime library ...
        return False
    return True


def cuda_context_exists() -> bool:
    """True when torch in this process has already initialised CUDA (never initialises it)."""
    torch = sys.modules.get("torch")  # not imported: it cannot have touched CUDA
    return bool(torch is not None and torch.cuda.is_initialized())


def threads_per_gpu_worker(num_gpus_per_worker: float) -> int:
    """Task threads per GPU worker: ``0.25`` GPU per task → 4 tasks sharing the worker's model."""
    return max(1, round(1 / check_gpu_share(num_gpus_per_worker)))


@dataclass(frozen=True)
class ClusterPlan:
    """What :func:`local_cluster` will start.

    Attributes
    ----------
    kind : str
        ``"cuda"`` (dask-cuda ``LocalCUDACluster``) or ``"cpu"`` (distributed ``LocalCluster``).
    options : dict
        Keyword arguments for that class.
    torch_threads : int
        Torch CPU threads set on each worker by the :class:`WorkerSetup` plugin.
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    torch_threads: int = 1


@dataclass(frozen=True)
class ClusterOptions:
    """The settings of a local cluster (:func:`local_cluster`, :func:`plan_local_cluster`,
    ``connect(**cluster_options)``), as one object; the attributes are those functions'
    arguments of the same names, with the same defaults.

    Attributes
    ----------
    overrides : dict
        Keyword arguments passed on to the cluster class, overriding the computed options.
    """

    kind: str = "auto"
    n_workers: int | None = None
    threads_per_worker: int | None = None
    num_gpus_per_worker: float = DEFAULT_NUM_GPUS_PER_WORKER
    torch_threads: int | None = None
    dashboard_address: str | None = DEFAULT_DASHBOARD
    security: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: ClusterOptions | None = None, **settings: Any) -> ClusterOptions:
        """``options`` (default: the defaults) with ``settings`` on top; a setting that is not an
        attribute goes to ``overrides`` (the cluster class's own keyword arguments)."""
        if options is not None and not isinstance(options, ClusterOptions):
            raise TypeError(f"options must be a ClusterOptions, not {type(options).__name__}")
        base = options or cls()
        names = {f.name for f in fields(cls)} - {"overrides"}
        known = {k: v for k, v in settings.items() if k in names}
        extra = {k: v for k, v in settings.items() if k not in names}
        if not extra:
            return replace(base, **known)
        return replace(base, **known, overrides={**base.overrides, **extra})


def plan_local_cluster(
    kind: str | None = None,
    *,
    options: ClusterOptions | None = None,
    n_gpus: int | None = None,
    dask_cuda_installed: bool | None = None,
    cores: int | None = None,
    rapids_installed: tuple[bool, bool] | None = None,
    cupy_usable: bool | None = None,
    **settings: Any,
) -> ClusterPlan:
    """Decide which local cluster to start and how, without starting anything.

    Parameters
    ----------
    kind
        ``"auto"`` (GPUs if any are visible and dask-cuda is installed, else CPU, the default),
        ``"cpu"`` or ``"cuda"``.
    options
        The settings below as one :class:`ClusterOptions`; keyword arguments override it.
    n_workers
        GPU: workers, one per GPU (default: every visible GPU). CPU: worker processes (default:
        one per 8 cores; each holds a model copy).
    threads_per_worker
        Tasks run at once per worker. GPU default: ``round(1 / num_gpus_per_worker)``; CPU
        default: 1 (torch uses the cores).
    num_gpus_per_worker
        GPU share of one task (NeMo Curator's knob), in (0, 1].
    torch_threads
        Torch CPU threads per worker; default: the host's cores divided among the workers.
    dashboard_address
        Bound to localhost by default; ``":8787"`` exposes it, None turns it off (the scheduler's
        HTTP server then serves nothing, on a random localhost port instead of 8787).
    security
        TLS for every connection of the cluster: a ``distributed.security.Security``, or True
        for a temporary self-signed certificate (``Security.temporary()``, needs
        ``cryptography``). None: Dask's configuration decides; where it requires encryption
        (``distributed.comm.require-encryption``) without naming certificates, a temporary one
        is made.
    n_gpus, dask_cuda_installed, cores, rapids_installed, cupy_usable
        Facts about this machine; detected when None (tests pass them in).
        ``rapids_installed`` is (rmm, cudf): the RMM options need rmm on the workers,
        ``enable_cudf_spill`` needs cuDF, so each is asked for only where installed;
        ``cupy_usable``: CuPy imports (a CuPy built for another CUDA major does not), so it
        can be put on RMM.
    **overrides
        Passed on to the cluster class, overriding the options computed here.

    Returns
    -------
    ClusterPlan

    Raises
    ------
    ValueError
        Unknown ``kind``, bad sizes, or ``kind="cuda"`` without a GPU.
    ImportError
        ``kind="cuda"`` without dask-cuda (the message says how to install it).
    """
    opts = ClusterOptions.of(options, **({"kind": kind} if kind is not None else {}), **settings)
    kind, n_workers, threads_per_worker = opts.kind, opts.n_workers, opts.threads_per_worker
    num_gpus_per_worker, torch_threads, dashboard_address = (
        opts.num_gpus_per_worker,
        opts.torch_threads,
        opts.dashboard_address,
    )
    security, overrides = opts.security, dict(opts.overrides)
    check_choice("kind", kind, CLUSTER_KINDS)
    for name, value in (
        ("n_workers", n_workers),
        ("threads_per_worker", threads_per_worker),
        ("torch_threads", torch_threads),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    per_task = threads_per_gpu_worker(num_gpus_per_worker)
    cores = cores or cpu_count()
    if dask_cuda_installed is not None:
        installed = dask_cuda_installed
    else:  # kind="cpu" never uses it: not imported then
        installed = kind != "cpu" and has_dask_cuda()
    problem = None if installed or kind == "cpu" else (dask_cuda_problem() or "dask-cuda is not installed")
    if kind != "cpu" and n_gpus is None:
        n_gpus = gpu_count()
    n_gpus = n_gpus or 0

    use_cuda = kind == "cuda" or (kind == "auto" and n_gpus > 0 and installed)
    if kind == "auto" and n_gpus > 0 and not installed:
        logger.warning(
            "dask_clip: %d GPU(s) visible but %s; starting a CPU LocalCluster "
            "(pip install 'dask-clip[gpu]', or 'dask-clip[gpu-cu12]' for CUDA 12, for one worker per GPU)",
            n_gpus,
            problem,
        )
    if use_cuda:
        if not installed:
            raise ImportError(f"kind='cuda' needs dask-cuda, but {problem}: pip install 'dask-clip[gpu]'")
        if n_gpus < 1:
            raise ValueError("kind='cuda' but no GPU is visible (check CUDA_VISIBLE_DEVICES); use kind='cpu'")
        if n_workers is not None and n_workers > n_gpus:
            raise ValueError(f"n_workers={n_workers} but only {n_gpus} GPU(s) are visible; one worker per GPU")
        workers = n_workers or n_gpus
        cluster_kwargs: dict[str, Any] = {
            "n_workers": workers,
            "threads_per_worker": threads_per_worker or per_task,
            "dashboard_address": dashboard_address,
        }
        # dask-cuda imports rmm / cudf on the workers for these; ask only for what is installed.
        has_rmm, has_cudf = rapids_installed or (
            importlib.util.find_spec("rmm") is not None,
            importlib.util.find_spec("cudf") is not None,
        )
        if has_rmm:
            # cudaMallocAsync's pool for cuDF (and CuPy): memory it no longer holds goes back to
            # the driver's pool, where torch's own caching allocator can get it.
            cluster_kwargs["rmm_async"] = True
            # Not torch: its pluggable-allocator hook (RMM's) ignores record_stream, which the
            # decode stream's hand-over to the model's stream relies on; torch keeps its own.
            if _cupy_usable() if cupy_usable is None else cupy_usable:
                cluster_kwargs["rmm_allocator_external_lib_list"] = ["cupy"]
        if has_cudf:
            cluster_kwargs["enable_cudf_spill"] = True
        kind_used = "cuda"
    else:
        workers = n_workers or max(1, cores // CORES_PER_CPU_WORKER)
        cluster_kwargs = {
            "n_workers": workers,
            "threads_per_worker": threads_per_worker or 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": dashboard_address,
        }
        kind_used = "cpu"
    if dashboard_address is None:
        cluster_kwargs["scheduler_kwargs"] = {"dashboard": False, "dashboard_address": _NO_DASHBOARD}
    security = _local_security(security)
    if security is not None:
        cluster_kwargs["security"] = security
    user_scheduler_kwargs = overrides.pop("scheduler_kwargs", None)
    cluster_kwargs.update(overrides)
    if user_scheduler_kwargs:
        cluster_kwargs["scheduler_kwargs"] = {**cluster_kwargs.get("scheduler_kwargs", {}), **user_scheduler_kwargs}
    if not cluster_kwargs.get("processes", True):
        cluster_kwargs.pop("host", None)  # an in-process cluster talks inproc://, which takes no host
    workers = int(cluster_kwargs.get("n_workers") or workers)
    threads = torch_threads or max(1, cores // (workers * int(cluster_kwargs["threads_per_worker"])))
    return ClusterPlan(kind=kind_used, options=cluster_kwargs, torch_threads=threads)


def local_cluster(
    kind: str | None = None,
    *,
    options: ClusterOptions | None = None,
    log_task_errors: bool = True,
    **settings: Any,
) -> Any:
    """Start a local cluster for CLIP inference: one worker per GPU, or a CPU cluster.

    With GPUs and dask-cuda: ``LocalCUDACluster`` with one worker per visible GPU,
    ``rmm_async=True``, CuPy allocating through RMM (torch keeps its own caching allocator),
    ``enable_cudf_spill=True`` and
    ``round(1 / num_gpus_per_worker)`` task threads per worker sharing its one model.
    Otherwise: ``LocalCluster`` with few worker processes, each setting torch's thread count
    to its share of the cores. See :func:`plan_local_cluster` for the parameters (``kind``,
    ``n_workers``, ``threads_per_worker``, ``num_gpus_per_worker``, ``torch_threads``,
    ``dashboard_address``, ``security``, or one :class:`ClusterOptions` as ``options``);
    ``security=True`` runs the cluster on TLS with a temporary self-signed certificate
    (``Client(cluster)`` picks it up); ``log_task_errors=False`` keeps the workers from
    logging failed tasks' tracebacks (:class:`~dask_clip.worker_setup.WorkerSetup`).

    Returns
    -------
    distributed.LocalCluster or dask_cuda.LocalCUDACluster
        Use as a context manager, or ``close()`` it.

    Raises
    ------
    RuntimeError
        A GPU cluster was asked for after this process created a CUDA context: every
        worker's model would land on the context's GPU.

    Examples
    --------
    >>> from distributed import Client
    >>> with local_cluster() as cluster, Client(cluster) as client:   # doctest: +SKIP
    ...     embedder(ddf).to_parquet("out/")
    """
    plan = plan_local_cluster(kind, options=options, **settings)
    dashboard_address = plan.options.get("dashboard_address", DEFAULT_DASHBOARD)
    quiet = dask.config.set({"distributed.scheduler.http.routes": []}) if dashboard_address is None else None
    with quiet or contextlib.nullcontext():
        cluster = _start(plan)
    try:
        from distributed import Client

        with Client(cluster) as client:  # the scheduler keeps the plugin for later workers
            client.register_plugin(WorkerSetup(torch_threads=plan.torch_threads, log_task_errors=log_task_errors))
    except BaseException:
        cluster.close()
        raise
    logger.info(
        "dask_clip: %s cluster with %s workers at %s",
        plan.kind,
        plan.options.get("n_workers"),
        cluster.scheduler_address,
    )
    return cluster


def _stop_workers_on_success(cluster: Any) -> Any:
    """An ``__exit__`` for an ExitStack: on a clean exit, :func:`stop_workers_now`."""

    def exit_(exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            stop_workers_now(cluster)

    return exit_


def stop_workers_now(cluster: Any) -> None:
    """End a local cluster's worker processes at once (SIGKILL), without a graceful close.

    For when the job's output is committed and nothing on the workers is needed any more. A
    graceful close waits for every worker process to exit, which with torch loaded takes
    seconds (the nanny waits 4 s, then kills it anyway; ViT-B-32 on 2 shared cores: 4.8-6.0 s
    graceful, 0.7-1.3 s at once, ``benchmarks/bench_close.py``). Each nanny is told first that
    its worker is going away on purpose, so it closes instead of starting a new worker.
    ``cluster.close()`` is still needed afterwards (it then returns in milliseconds). Workers
    not started by a local nanny in this process (``processes=False``, a remote cluster) are
    left alone.

    Parameters
    ----------
    cluster
        A ``distributed.LocalCluster`` or ``dask_cuda.LocalCUDACluster``.
    """
    import asyncio

    from distributed import Nanny

    nannies = [w for w in getattr(cluster, "workers", {}).values() if isinstance(w, Nanny)]
    if not nannies or getattr(cluster, "asynchronous", False):
        return

    async def stop() -> None:
        processes = []
        for nanny in nannies:
            worker = nanny.process.process if nanny.process is not None else None
            if worker is not None and worker.is_alive():
                nanny.close_gracefully(reason="dask-clip: output committed")  # no restart on exit
                processes.append(worker)
        await asyncio.gather(*(p.kill() for p in processes))
        await asyncio.gather(*(p.join() for p in processes))

    try:
        cluster.sync(stop)
    except Exception:  # the graceful close that follows still ends everything
        logger.debug("dask_clip: stopping the workers at once failed", exc_info=True)


def _start(plan: ClusterPlan) -> Any:
    if plan.options.get("security") is True:
        try:
            import cryptography  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "a temporary TLS certificate (security=True, or Dask's require-encryption setting) needs "
                "cryptography: pip install 'dask-clip[tls]'"
            ) from err
    if plan.kind == "cuda":
        if cuda_context_exists():
            raise RuntimeError(
                "this process already created a CUDA context (torch.cuda.is_initialized() is "
                "True), so LocalCUDACluster's workers would all end up on that GPU. Start the "
                "cluster before anything here touches CUDA (moving a tensor or model to "
                "'cuda'), e.g. at the top of the script or in a fresh kernel"
            )
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(**plan.options)
    from distributed import LocalCluster

    return LocalCluster(**plan.options)


def _scheduler_address(scheduler_file: str | None, scheduler_address: str | None) -> str | None:
    if scheduler_address:
        return scheduler_address
    try:
        with open(str(scheduler_file)) as f:
            return str(json.load(f).get("address") or "") or None
    except (OSError, ValueError):
        return None  # not written yet: the client waits for it


def _open_client(
    stack: contextlib.ExitStack,
    scheduler_file: str | None,
    scheduler_address: str | None,
    security: Any,
    preload: Any,
    cluster_options: dict[str, Any],
) -> Any:
    """Connect (starting a local cluster when no scheduler is given); ``stack`` closes both."""
    from distributed import Client

    if scheduler_file and scheduler_address:
        raise ValueError("pass scheduler_file or scheduler_address, not both")
    if scheduler_file or scheduler_address:
        given = sorted(k for k, v in cluster_options.items() if v is not None)
        if given:
            raise ValueError(f"local cluster options {given} do not apply to an existing cluster")
        if security is True:
            raise ValueError("security=True (a temporary certificate) only applies to a local cluster")
        _check_tls(_scheduler_address(scheduler_file, scheduler_address), security)
        if scheduler_file:
            client = Client(scheduler_file=scheduler_file, security=security)
        else:
            client = Client(scheduler_address, security=security)
    else:
        cluster = stack.enter_context(local_cluster(security=security, **cluster_options))
        stack.push(_stop_workers_on_success(cluster))  # runs after client.close, before cluster.close
        client = Client(cluster)
    # close(), not the client's context manager: that one resets a context variable, which
    # fails when the client was opened in connect_early's thread and is closed in the caller's
    stack.callback(client.close)
    if preload is not None:
        from .worker import register_preload

        # a plugin, not client.run: workers that start or restart later get the preload too
        register_preload(client, preload)  # returns at once: the load runs in a thread of each worker
    return client


@contextlib.contextmanager
def connect(
    *,
    scheduler_file: str | None = None,
    scheduler_address: str | None = None,
    security: Any = None,
    worker_timeout: float | None = None,
    preload: Any = None,
    **cluster_options: Any,
) -> Iterator[Any]:
    """A ``distributed.Client`` on an existing cluster, or on a new :func:`local_cluster`.

    Parameters
    ----------
    scheduler_file
        JSON file written by ``dask scheduler --scheduler-file``.
    scheduler_address
        ``tcp://host:port`` (or ``tls://``) of a running scheduler.
    security
        A ``distributed.security.Security`` (:func:`tls_security`) for a TLS cluster; for a
        local cluster also True (temporary self-signed TLS). None: Dask's configuration.
    worker_timeout
        Seconds the cluster may have no worker at all while the block runs before
        :class:`~dask_clip.errors.NoWorkersError` is raised in the main thread
        (:func:`~dask_clip.runtime.watchdog.watch_workers`); None: wait for workers forever.
    preload
        A :class:`~dask_clip.models.spec.ModelSpec` whose model every worker starts loading as soon
        as the client is connected, and every worker that starts or restarts later
        (:func:`~dask_clip.runtime.worker.register_preload`).
    **cluster_options
        For :func:`local_cluster` when neither is given.

    Yields
    ------
    distributed.Client
        Closed on exit, together with the local cluster it started, if any.
    """
    from .watchdog import watch_workers

    with contextlib.ExitStack() as stack:
        client = _open_client(stack, scheduler_file, scheduler_address, security, preload, cluster_options)
        stack.enter_context(watch_workers(client, worker_timeout))
        yield client


@contextlib.contextmanager
def connect_early(*, worker_timeout: float | None = None, **connect_options: Any) -> Iterator[Any]:
    """:func:`connect`, started now in a thread: the cluster starts while the caller plans its job.

    Yields a function that waits for the client and returns it (watching its workers from then
    on, as :func:`connect` does). On exit the client and the cluster close, also when the
    function was never called (the job had nothing to do) or the caller failed meanwhile.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .watchdog import watch_workers

    options = dict(connect_options)
    scheduler_file, scheduler_address = options.pop("scheduler_file", None), options.pop("scheduler_address", None)
    security, preload = options.pop("security", None), options.pop("preload", None)
    opened = contextlib.ExitStack()
    pool = ThreadPoolExecutor(1, thread_name_prefix="dask-clip-connect")
    future = pool.submit(_open_client, opened, scheduler_file, scheduler_address, security, preload, options)

    def close(*exc_info: Any) -> None:
        try:
            future.result()  # a cluster that is still starting is closed once it has started
        except BaseException:
            pass
        finally:
            opened.__exit__(*exc_info)  # the caller's outcome decides how the local cluster stops
            pool.shutdown()

    with contextlib.ExitStack() as stack:
        stack.push(close)

        def wait() -> Any:
            client = future.result()
            stack.enter_context(watch_workers(client, worker_timeout))
            return client

        yield wait
