"""dask_clip workers on Slurm, PBS and the other batch systems of dask-jobqueue.

``dask_jobqueue.SLURMCluster`` / ``PBSCluster`` submit one batch job per ``cluster.scale(jobs=N)``
and run a worker command in each. :func:`jobqueue_options` gives the arguments that make that
command a dask_clip worker: ``dask cuda worker`` (one worker per GPU of the job's node) on GPU
nodes or ``dask worker`` on CPU nodes, with ``--preload dask_clip.worker_setup`` (torch's thread
count, :mod:`dask_clip.worker_setup`) and, where asked, a ``GPU`` resource per worker for the
task resources of :mod:`dask_clip.resources`::

    from dask_jobqueue import SLURMCluster
    from dask_clip.jobqueue import jobqueue_options

    cluster = SLURMCluster(
        cores=64, memory="480GB", walltime="04:00:00", queue="gpu",
        job_extra_directives=["--gpus-per-node=8"],
        **jobqueue_options(gpus=8, threads_per_gpu=4),
    )
    cluster.scale(jobs=4)            # 4 nodes, 32 GPU workers

dask-jobqueue needs ``pip install dask-jobqueue`` (not a dependency of dask_clip). The cluster's
scheduler runs where the cluster object is made (a login node or a job of its own); the
``--scheduler-file`` route (docs/clusters.md) needs no dask-jobqueue.
"""

from __future__ import annotations

from typing import Any

from .worker_setup import TORCH_THREADS_ENV

__all__ = ["CPU_WORKER_COMMAND", "GPU_WORKER_COMMAND", "PRELOAD", "jobqueue_options"]

#: ``python -m`` target of ``dask cuda worker`` (dask-cuda's click group, subcommand ``worker``).
GPU_WORKER_COMMAND = "dask_cuda.cli worker"
#: ``python -m`` target of ``dask worker``: dask-jobqueue's default.
CPU_WORKER_COMMAND = "distributed.cli.dask_worker"
PRELOAD = "dask_clip.worker_setup"


def jobqueue_options(
    *,
    gpus: int = 0,
    threads_per_gpu: int = 4,
    torch_threads: int | None = None,
    gpu_resource: bool = False,
    rmm_async: bool = True,
    extra_args: tuple[str, ...] = (),
    prologue: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Keyword arguments for a dask-jobqueue cluster class whose workers run dask_clip.

    Parameters
    ----------
    gpus
        GPUs per job (node). Above 0, each job runs ``dask cuda worker``: one worker process per
        GPU, pinned to it, each with ``threads_per_gpu`` task threads sharing one model
        (``num_gpus_per_worker=1/threads_per_gpu``). 0: ``dask worker`` on CPU.
    threads_per_gpu
        Task threads per GPU worker (``--nthreads`` of ``dask cuda worker``).
    torch_threads
        torch CPU threads per worker process, exported as ``$DASK_CLIP_TORCH_THREADS`` for the
        preload; None lets the preload use the worker's cores.
    gpu_resource
        Declare ``--resources GPU=1`` on each GPU worker, for a cluster mixing CPU and GPU
        workers (:mod:`dask_clip.resources` then keeps the embedding tasks on GPU workers).
    rmm_async
        ``--rmm-async --set-rmm-allocator-for-libs cupy`` on GPU workers (docs/gpu.md).
    extra_args
        More worker command-line arguments.
    prologue
        More shell lines before the worker command (``module load cuda``, ``source venv``).

    Returns
    -------
    dict
        ``worker_command``, ``worker_extra_args`` and ``job_script_prologue``; for GPU jobs
        also ``processes=1`` (dask-cuda starts the per-GPU processes itself).

    Raises
    ------
    ValueError
        A negative GPU count or a thread count below 1.
    """
    if gpus < 0 or threads_per_gpu < 1 or (torch_threads is not None and torch_threads < 1):
        raise ValueError(
            f"gpus must be >= 0 and threads_per_gpu, torch_threads >= 1; got {gpus}, {threads_per_gpu}, {torch_threads}"
        )
    args = ["--preload", PRELOAD]
    lines = list(prologue)
    if torch_threads is not None:
        lines.append(f"export {TORCH_THREADS_ENV}={int(torch_threads)}")
    options: dict[str, Any] = {"job_script_prologue": lines}
    if gpus == 0:
        options.update(worker_command=CPU_WORKER_COMMAND, worker_extra_args=[*args, *extra_args])
        return options
    # dask-jobqueue writes --nthreads (cores / processes) and --memory-limit (the whole job's
    # memory) first; click keeps an option's last value, so these per-GPU-worker ones win.
    args += ["--nthreads", str(int(threads_per_gpu)), "--memory-limit", "auto"]
    if rmm_async:
        args += ["--rmm-async", "--set-rmm-allocator-for-libs", "cupy"]
    if gpu_resource:
        args += ["--resources", "GPU=1"]
    options.update(worker_command=GPU_WORKER_COMMAND, worker_extra_args=[*args, *extra_args], processes=1)
    return options
