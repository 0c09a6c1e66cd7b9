"""One worker lifecycle: the job's model preloaded on every worker, new and restarted ones
included, and the worker's caches cleared on teardown.

``Client.run`` reaches only the workers alive when it is called; a plugin registered with the
scheduler is replayed on every worker that joins later and on every worker its nanny restarts
(as dask-cuda attaches its ``RMMSetup`` and ``PreImport`` plugins). Registering is what
:func:`dask_clip.connect` does with ``preload=spec``; by hand::

    register_preload(client, ImageEmbedder(model_dir="/models/clip").spec)
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from distributed import WorkerPlugin

from .caches import clear_all

__all__ = ["PRELOAD_PREFIX", "ModelPreload", "register_preload"]

logger = logging.getLogger(__name__)
PRELOAD_PREFIX = "dask-clip-preload-"


class ModelPreload(WorkerPlugin):
    """Worker plugin: start loading a model on each worker as it starts; clear the caches on teardown.

    Parameters
    ----------
    spec
        The :class:`~dask_clip.models.spec.ModelSpec` whose model each worker loads, in a background
        thread (:func:`dask_clip.worker_setup.preload_model`): ``setup`` runs on the worker's
        event loop and returns at once; the first task waits for the load.

    Notes
    -----
    The plugin's name holds a digest of the spec and it is idempotent: registering the same
    spec again (the next job of the same model) changes nothing, and a worker keeps its
    model. ``teardown`` on a closing worker empties every cache of the process
    (:func:`dask_clip.runtime.caches.clear_all`): models, heads, zero-shot classes, decode threads.
    """

    idempotent = True

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name = PRELOAD_PREFIX + hashlib.sha256(repr(spec).encode()).hexdigest()[:12]

    def setup(self, worker: object) -> None:
        from ..worker_setup import preload_model

        preload_model(self.spec)

    def teardown(self, worker: object) -> None:
        """The worker is closing: empty its caches (models, heads, zero-shot classes, decode
        threads). The plugin merely removed — the next job preloads another model — leaves them:
        tasks of a job still running on the worker may use them, as before the plugin existed."""
        from distributed.core import Status

        if worker is not None and getattr(worker, "status", None) not in (Status.closing, Status.closed):
            return
        cleared = clear_all()
        logger.debug("dask_clip: cleared the worker caches %s", cleared)


def _preload_names(dask_scheduler: Any) -> list[str]:
    """The dask_clip preload plugins the scheduler replays on new workers (run on the scheduler)."""
    return [name for name in dask_scheduler.worker_plugins if str(name).startswith(PRELOAD_PREFIX)]


def register_preload(client: Any, spec: Any) -> ModelPreload:
    """Preload ``spec``'s model on every worker of ``client``'s cluster, now and at each (re)start.

    Another model's preload plugin, left by an earlier job, is removed first, so that a
    long-lived cluster's new workers load only the current job's model (the running workers keep
    what they loaded, as tasks of another job may still use it).

    Parameters
    ----------
    client
        A ``distributed.Client``.
    spec
        The :class:`~dask_clip.models.spec.ModelSpec` to load.

    Returns
    -------
    ModelPreload
        The registered plugin.
    """
    plugin = ModelPreload(spec)
    try:
        stale = [name for name in client.run_on_scheduler(_preload_names) if name != plugin.name]
    except Exception:  # a scheduler that refuses run_on_scheduler: leave its plugins alone
        logger.debug("dask_clip: could not list the scheduler's worker plugins", exc_info=True)
        stale = []
    for name in stale:
        client.unregister_worker_plugin(name)
    client.register_plugin(plugin)
    return plugin
