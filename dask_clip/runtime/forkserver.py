"""Local worker processes forked from a server that has imported torch once, at the CLI's start.

A local cluster's nanny starts each worker with multiprocessing's ``spawn``: a fresh
interpreter that imports distributed, torch, torchvision and open_clip (4-8 s of CPU on 2
cores) before it can load a model, and only once the client has imported its own libraries
and started the scheduler. :func:`start_forkserver` starts multiprocessing's fork server at
once instead, importing those libraries (:data:`WORKER_MODULES`) while the client still
parses, plans and starts the scheduler; :func:`forked_workers` then has the nannies of local
clusters fork their workers from it (``distributed.worker.multiprocessing-method:
forkserver``, which distributed and ``dask cuda worker --multiprocessing-method`` support),
so a worker starts with its imports done, and several workers share the imported code.

Fork safety: the server only imports; it runs no torch operation (no intra-op thread pool),
creates no CUDA context (importing torch does not initialise CUDA; each worker does, after
its nanny has set its ``CUDA_VISIBLE_DEVICES``), and it sets the nanny's
``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1`` ...) before importing the
numeric libraries, as the nanny does before a spawn, so OpenBLAS starts no threads there.
The workers then set torch's threads as before (:class:`~dask_clip.worker_setup.WorkerSetup`).

``dask_clip.local-cluster.forkserver: false`` in Dask's config (or ``DASK_CLIP__LOCAL_CLUSTER__FORKSERVER=false``)
turns this off: workers are spawned as distributed does by default. Clusters the CLI does not
start (``--scheduler-file``, ``--scheduler-address``) are not touched.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Iterator

__all__ = [
    "CONFIG_KEY",
    "PRELOAD_MODULE",
    "WORKER_MODULES",
    "forked_workers",
    "forkserver_enabled",
    "forkserver_pid",
    "start_forkserver",
    "stop_forkserver",
]

logger = logging.getLogger(__name__)
CONFIG_KEY = "local-cluster.forkserver"
NANNY_HASH_SEED = "6640"
#: the module the fork server imports; importing it imports :data:`WORKER_MODULES`
PRELOAD_MODULE = "dask_clip.runtime._forkserver_preload"
#: what a worker imports to embed, in order (after the pre-spawn environment is set)
WORKER_MODULES = (
    "distributed",
    "torch",
    "torchvision",
    "dask_clip.models.cache",
    "dask_clip.embed.pipeline",
    "dask_clip.embed.infer",
    "dask_clip.io.writers.parquet",
    "dask_clip.runtime.worker",
    "dask_clip.worker_setup",
    "dask_clip.cli",  # the console script, which a worker imports again as its __mp_main__
)


def forkserver_enabled() -> bool:
    """``dask_clip.local-cluster.forkserver`` is on, on Linux (macOS's system libraries are not
    safe to use after a fork without exec, which is why Python spawns there)."""
    import sys

    from .. import config

    return bool(config.get(CONFIG_KEY)) and sys.platform.startswith("linux")


def start_forkserver() -> bool:
    """Start multiprocessing's fork server now, importing :data:`WORKER_MODULES` in it; returns
    at once (the imports run in the server's own process). False where it is turned off.

    A fork server that is already running (this process started one before) is kept, with
    whatever it imported.
    """
    if not forkserver_enabled():
        return False
    from multiprocessing import forkserver

    # distributed's get_mp_context sets its own preload list the first time it is called; a
    # server that already runs keeps the list it was started with (ours).
    multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD_MODULE])
    # The nanny spawns workers with PYTHONHASHSEED=6640, for the same hashes on every worker
    # (distributed#8400); a forked worker has its server's, set when the server starts.
    seed = "PYTHONHASHSEED" not in os.environ
    if seed:
        os.environ["PYTHONHASHSEED"] = NANNY_HASH_SEED
    try:
        forkserver.ensure_running()
    finally:
        if seed:
            del os.environ["PYTHONHASHSEED"]
    return True


def forkserver_pid() -> int | None:
    """The pid of the fork server this process started (None: none, or stopped)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return None if pid is None else int(pid)


def stop_forkserver() -> None:
    """End this process's fork server now, once no worker is forked from it any more.

    Left alone, it would end on its own when this process exits, but only after finalising an
    interpreter that holds torch (1-3 s on 2 cores), holding this process's stdout and stderr
    open meanwhile (a caller that reads them waits); and a command that fails before its
    cluster starts would wait for the server's imports. Its workers are unaffected: each is its
    own process. A later :func:`start_forkserver` starts a new one.
    """
    import signal
    from multiprocessing import forkserver

    pid = forkserver_pid()
    if pid is None:
        return
    with contextlib.suppress(OSError):  # gone meanwhile
        os.kill(pid, signal.SIGKILL)  # nothing to finalise: it only imported modules
    try:  # multiprocessing's own clean-up: reaps it and forgets it
        forkserver._forkserver._stop()  # type: ignore[attr-defined]
    except Exception:
        logger.debug("dask_clip: cleaning up after the fork server failed", exc_info=True)


@contextlib.contextmanager
def forked_workers() -> Iterator[bool]:
    """Within the block, local clusters fork their worker processes from the server of
    :func:`start_forkserver` (started here); on exit, the server is stopped
    (:func:`stop_forkserver`) if this block started it. Yields whether workers are forked.

    The setting lasts for the whole block, so that a worker its nanny restarts is forked too.
    Close the block after the cluster. A server that was already running (an outer block, a
    test session, a notebook that calls ``cli.main`` twice) is used and left running: stopping
    it would make the next fork of its owner wait for a new server's imports.
    """
    owned = forkserver_pid() is None
    try:
        started = start_forkserver()
    except Exception:  # e.g. no room for another process: spawn them as distributed does
        logger.warning("dask_clip: could not start the fork server; spawning the workers", exc_info=True)
        started = False
    if not started:
        yield False
        return
    import dask

    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            yield True
    finally:
        if owned:
            stop_forkserver()
