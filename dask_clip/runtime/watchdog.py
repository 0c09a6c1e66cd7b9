"""Never wait silently on a cluster with no worker: a watch on the scheduler's worker count.

When every worker has died (killed by the kernel's OOM killer, a lost node, a nanny killed with
its worker) or none ever joined, a Dask client waits for its futures forever: the scheduler keeps
the tasks until a worker comes. :func:`watch_workers` polls the worker count in a background
thread; after ``timeout`` seconds with none it raises :class:`~dask_clip.errors.NoWorkersError`
in the main thread, wherever that thread is waiting (``as_completed``, ``dask.compute``,
``Client.gather``). The main thread is woken by a SIGINT sent to itself, which the watch's own
handler turns into that error (a Ctrl-C from the user stays a ``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import NoWorkersError

__all__ = ["DEFAULT_WORKER_TIMEOUT", "count_workers", "watch_workers"]

logger = logging.getLogger(__name__)

#: Seconds without any worker before a job gives up (``--worker-timeout``).
DEFAULT_WORKER_TIMEOUT = 120.0


def count_workers(client: Any) -> int:
    """Workers the scheduler knows now (asks it; 0 when it cannot be reached)."""
    try:
        return len(client.nthreads())
    except Exception:  # scheduler gone or unreachable: no worker either
        return 0


class _Watch:
    def __init__(self, client: Any, timeout: float, poll: float) -> None:
        self.client = client
        self.timeout = timeout
        self.poll = poll
        self.fired = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dask-clip-worker-watch", daemon=True)

    def _run(self) -> None:
        last_seen = time.monotonic()
        warned = False
        while not self.stop.wait(self.poll):
            if count_workers(self.client) > 0:
                last_seen, warned = time.monotonic(), False
                continue
            idle = time.monotonic() - last_seen
            if not warned and idle >= min(10.0, self.timeout / 2):
                logger.warning(
                    "dask_clip: no worker alive for %.0f s; giving up after %.0f s (--worker-timeout)",
                    idle,
                    self.timeout,
                )
                warned = True
            if idle >= self.timeout and not self.stop.is_set():
                self.fired = True
                self._wake_main()
                return

    def _wake_main(self) -> None:
        main = threading.main_thread()
        if hasattr(signal, "pthread_kill") and main.ident is not None:
            signal.pthread_kill(main.ident, signal.SIGINT)  # interrupts a blocking wait, too
        else:  # pragma: no cover - not POSIX
            import _thread

            _thread.interrupt_main()

    def error(self) -> NoWorkersError:
        return NoWorkersError(self.timeout)


@contextlib.contextmanager
def watch_workers(client: Any, timeout: float | None = DEFAULT_WORKER_TIMEOUT, *, poll: float = 1.0) -> Iterator[None]:
    """Raise :class:`~dask_clip.errors.NoWorkersError` in the main thread when ``client``'s
    cluster has had no worker for ``timeout`` seconds (a worker that joins resets the clock).

    Parameters
    ----------
    client
        A ``distributed.Client``.
    timeout
        Seconds without any worker; None (or outside the main thread, where no signal handler
        can be installed) watches nothing.
    poll
        Seconds between two looks at the worker count.
    """
    in_main = threading.current_thread() is threading.main_thread()
    if timeout is None or not in_main:
        yield
        return
    watch = _Watch(client, float(timeout), poll)
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if watch.fired:
            watch.fired = False  # raise once; a later Ctrl-C is the user's
            raise watch.error()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    watch.thread.start()
    try:
        yield
    finally:
        watch.stop.set()
        signal.signal(signal.SIGINT, previous)
    if watch.fired:  # fired just as the body finished: the job got its results, nothing to say
        logger.debug("dask_clip: worker watch fired after the job ended (pid %d)", os.getpid())
