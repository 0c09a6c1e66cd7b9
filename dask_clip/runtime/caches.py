"""The per-process caches of a worker, in one registry, so that one call clears them all.

Each cache (loaded models, loaded heads, zero-shot class embeddings, decode threads) lives in
its own module and registers how to clear itself here; :func:`clear_all` is what the worker
plugin's ``teardown`` (:class:`dask_clip.runtime.worker.ModelPreload`) and
:func:`dask_clip.models.clear_cache` call. A leaf module: it imports nothing of dask_clip, so
any module may register without an import circle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["clear_all", "register"]

_CLEARERS: dict[str, Callable[[], None]] = {}
_LOCK = threading.Lock()


def register(name: str, clear: Callable[[], None]) -> None:
    """Register ``clear`` (no arguments) as the way to empty the cache called ``name``.

    Registering a name again replaces its function (a module reloaded in tests).
    """
    with _LOCK:
        _CLEARERS[name] = clear


def clear_all() -> list[str]:
    """Empty every registered cache of this process, in registration order.

    Returns
    -------
    list of str
        The names of the caches cleared.
    """
    with _LOCK:
        clearers = list(_CLEARERS.items())
    for _, clear in clearers:
        clear()
    return [name for name, _ in clearers]
