"""``num_gpus_per_worker`` as Dask worker resources, for clusters that declare a ``GPU`` resource.

Two mappings exist (docs/gpu.md):

- On a one-GPU-per-worker cluster (``LocalCUDACluster``, ``dask cuda worker``), a worker runs
  ``round(1 / num_gpus_per_worker)`` task threads that share its one model: 0.25 → 4 threads
  (the cluster helper sets this).
- On a cluster whose workers declare a ``GPU`` resource (``dask worker --resources GPU=1``),
  each embedding task asks for ``num_gpus_per_worker`` of it, so at most
  ``1 / num_gpus_per_worker`` run at once per GPU and none runs on a worker without one.
  dask-expr ignores ``dask.annotate`` at graph construction, so the resources are given when
  the graph is submitted: :func:`compute` does that, and ``embed_parquet`` / ``dask-clip
  embed`` do it for their tasks whenever a worker of the cluster declares a ``GPU`` resource
  (:func:`declares_gpu`; :func:`dask_clip.io.writers.base.run_all`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .validation import DEFAULT_NUM_GPUS_PER_WORKER, check_gpu_share

__all__ = ["compute", "declares_gpu", "gpu_annotation", "gpu_resources"]


def gpu_resources(num_gpus_per_worker: float) -> dict[str, float]:
    """The task resources for a GPU share: ``{"GPU": num_gpus_per_worker}``.

    Parameters
    ----------
    num_gpus_per_worker
        Share of one GPU per task, in (0, 1].

    Raises
    ------
    ValueError
        Outside (0, 1].
    """
    return {"GPU": check_gpu_share(num_gpus_per_worker)}


@contextlib.contextmanager
def gpu_annotation(num_gpus_per_worker: float) -> Iterator[None]:
    """``dask.annotate(resources={"GPU": share})``; enter it around ``client.compute``/``persist``
    (not around building the DataFrame: dask-expr drops annotations made then)."""
    import dask

    with dask.annotate(resources=gpu_resources(num_gpus_per_worker)):
        yield


def compute(
    client: Any, *collections: Any, num_gpus_per_worker: float = DEFAULT_NUM_GPUS_PER_WORKER, **kwargs: Any
) -> Any:
    """``client.compute(...)`` with every task asking for ``num_gpus_per_worker`` GPUs.

    Parameters
    ----------
    client
        A ``distributed.Client`` whose workers declare a ``GPU`` resource (tasks wait forever
        on a cluster where none does).
    *collections
        Dask collections, as for ``Client.compute``.
    num_gpus_per_worker
        GPU share of one task (``ImageEmbedder.num_gpus_per_worker``).
    **kwargs
        Passed to ``Client.compute``.

    Returns
    -------
    Future or list of Future
        As ``Client.compute`` returns them.
    """
    with gpu_annotation(num_gpus_per_worker):
        return client.compute(collections[0] if len(collections) == 1 else list(collections), **kwargs)


def declares_gpu(client: Any) -> bool:
    """Whether any worker of ``client``'s cluster declares a ``GPU`` resource (a cluster that
    mixes CPU and GPU workers, e.g. ``dask_clip.jobqueue`` with ``gpu_resource=True``): then an
    embedding task must ask for its GPU share, or it may run on a CPU worker."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any("GPU" in (worker.get("resources") or {}) for worker in workers.values())
