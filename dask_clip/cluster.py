"""Local clusters sized for CLIP inference, and the worker setup that makes them fast.

Worker setup is a :class:`distributed.WorkerPlugin`, so it reaches workers that join later
and workers restarted by their nanny (``Client.run`` does neither). Workers started from the
command line get the same setup with ``--preload dask_clip.worker_setup``.
"""

from __future__ import annotations

import os

from distributed import WorkerPlugin

__all__ = ["TorchThreads", "local_cluster", "cpu_count"]


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TorchThreads(WorkerPlugin):
    """Set torch's CPU thread count on each worker (the nanny sets ``OMP_NUM_THREADS=1``).

    Parameters
    ----------
    threads
        Intra-op threads for torch on the worker.
    """

    idempotent = True
    name = "dask-clip-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)

    def setup(self, worker: object) -> None:  # noqa: D102
        import torch

        torch.set_num_threads(self.threads)


def local_cluster(*, n_workers: int | None = None, dashboard_address: str = "127.0.0.1:0", **overrides: object):
    """A CPU ``LocalCluster`` sized for the cores: few processes (each holds a model copy),
    torch threads set on every worker.

    Parameters
    ----------
    n_workers
        Worker processes (default: one per 8 cores, at least one).
    dashboard_address
        Bound to localhost unless you ask otherwise.
    **overrides
        Passed to ``distributed.LocalCluster``.

    Returns
    -------
    distributed.LocalCluster
    """
    from distributed import LocalCluster

    cores = cpu_count()
    n_workers = n_workers or max(1, cores // 8)
    options: dict = {
        "n_workers": n_workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": dashboard_address,
        "host": "127.0.0.1",
    }
    options.update(overrides)
    cluster = LocalCluster(**options)
    from distributed import Client

    with Client(cluster) as client:
        client.register_plugin(TorchThreads(max(1, cores // int(options["n_workers"]))))
    return cluster
