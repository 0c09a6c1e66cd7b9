"""Every failure the CLI can meet, as one line: what went wrong — what to do.

:func:`explain` maps an exception (raised here or on a worker and re-raised by the client) to
that line; ``dask-clip -v`` prints the traceback as well.
"""

from __future__ import annotations

import errno

__all__ = ["RESUME", "explain"]

AGAIN = "run the same command again to resume"
RESUME = f"finished part files are kept: {AGAIN}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _killed_worker(err: BaseException) -> str:
    task = getattr(err, "task", None) or (err.args[0] if err.args else "a task")
    return (
        f"a worker process died while running {task} each time it was tried (out of memory, or a crash "
        "in native code?; the worker logs say which) — "
        f"{RESUME}; give workers more memory or lower --batch-size / --partition-size"
    )


def _os_error(err: OSError) -> str:
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    # pyarrow's write errors are OSErrors without an errno: the text says it
    if err.errno == errno.ENOSPC or "No space left on device" in str(err):
        return f"no space left on device{where} — finished part files are kept: free some space, then {AGAIN}"
    if err.errno == errno.EDQUOT or "Disk quota exceeded" in str(err):
        return f"disk quota exceeded{where} — finished part files are kept: free some space, then {AGAIN}"
    if isinstance(err, FileExistsError):
        return f"{_one_line(str(err))} — remove it or choose another OUTPUT"
    if isinstance(err, PermissionError):
        return f"{_one_line(str(err))} — check the permissions of INPUT, OUTPUT and --model-dir on every node"
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return _one_line(str(err))
    if "Timed out trying to connect" in str(err) or isinstance(err, ConnectionError):
        return (
            f"{_one_line(str(err))} — is the scheduler running and reachable from here? "
            "(a TLS scheduler needs --tls-ca-file/--tls-cert/--tls-key)"
        )
    return f"{type(err).__name__}: {_one_line(str(err))} — {RESUME}"


def explain(err: BaseException) -> str:
    """The one-line message (without the ``dask-clip CMD: error:`` prefix) for ``err``."""
    from ..errors import DaskClipError

    name = type(err).__name__
    if name == "KilledWorker":
        return _killed_worker(err)
    if name == "SafetensorError":  # raised by safetensors outside our model loading
        return f"unreadable safetensors file: {_one_line(str(err))} — fetch the weights again"
    if isinstance(err, DaskClipError):
        return _one_line(str(err))
    if isinstance(err, OSError):
        return _os_error(err)
    if isinstance(err, (ValueError, TypeError, ImportError)):
        return _one_line(str(err))
    if isinstance(err, LookupError):  # str(KeyError) quotes its message; nothing was written
        return _one_line(str(err.args[0]) if err.args else name)
    if name in ("CancelledError", "FutureCancelledError"):
        return f"the cluster cancelled the job ({_one_line(str(err)) or name}) — {RESUME}"
    if isinstance(err, MemoryError):
        return f"out of memory in this process — {RESUME} with a smaller --partition-size"
    return f"{name}: {_one_line(str(err))} — run with -v for the traceback; {RESUME}"
