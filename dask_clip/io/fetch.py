"""Reading one image's bytes from a path or URL, bounded: what a path column can make a worker do.

A path column is user data, so every read is bounded before it starts:

- **Protocols.** Only the protocols in ``allowed_protocols`` are opened (:data:`DEFAULT_PROTOCOLS`:
  local files and the object stores, whose endpoints are fixed). ``http``/``https``, ``ftp``,
  ``sftp`` and others reach any host a URL names, so they are opt-in. A chained URL
  (``simplecache::s3://...``) needs every protocol of its chain allowed. The check runs before
  any filesystem is created: creating one (ftp, sftp) may already connect.
- **Local paths.** ``os.stat`` first: only regular files are read, so a FIFO (which would block
  forever), a device (``/dev/zero``, ``/dev/urandom``: endless), a directory or a socket is a row
  error, and so is a file larger than ``max_bytes`` (a 10 GB sparse file is refused without a
  read). The file is opened non-blocking, checked again on its descriptor (it may have been
  swapped since the ``stat``), and read to at most ``max_bytes + 1`` bytes (a ``/proc`` file
  reports size 0).
- **Remote reads** ask for at most ``max_bytes + 1`` bytes (a byte range on object stores, a
  stream cut off on HTTP), each within ``timeout`` seconds, so a server that stalls or never ends
  costs one row, not the task.

Every function here returns ``(bytes, None)`` or ``(None, reason)`` per row and never raises for
a row.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_PROTOCOLS",
    "DEFAULT_READ_TIMEOUT",
    "HTTP_PROTOCOLS",
    "LOCAL_PROTOCOLS",
    "ReadResult",
    "check_protocols",
    "read_local",
    "read_urls",
    "url_protocols",
]

ReadResult = tuple["bytes | None", "str | None"]
T = TypeVar("T")

#: Bytes one encoded image may take (``ImageEmbedder(max_image_bytes=...)``): 64 MiB, more than
#: any real photo (a 100-megapixel camera JPEG is 30-60 MB; img2dataset's web images are far
#: below 1 MB), far less than a worker's memory.
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20
#: Seconds one remote read may take (``ImageEmbedder(read_timeout=...)``).
DEFAULT_READ_TIMEOUT = 60.0
LOCAL_PROTOCOLS = ("file", "local")
#: Protocols read by default: local files, and object stores whose endpoints are fixed by the
#: filesystem (S3, Google Cloud Storage, Azure, the Hugging Face Hub), not by the URL's host.
DEFAULT_PROTOCOLS = (*LOCAL_PROTOCOLS, "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "hf")
#: Opt-in (``allowed_protocols=(*DEFAULT_PROTOCOLS, *HTTP_PROTOCOLS)``, needs aiohttp:
#: ``pip install 'dask-clip[http]'``): a URL's host may be any machine the worker can reach.
HTTP_PROTOCOLS = ("http", "https")
# Remote reads in flight at once per filesystem (fsspec's own default batch is 128).
_CONCURRENT_READS = 32
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def url_protocols(url: str) -> list[str]:
    """The protocols of a path or URL, outermost first: ``["file"]`` for a plain path,
    ``["simplecache", "s3"]`` for ``simplecache::s3://b/k``. Lower-case; reads nothing."""
    from fsspec.core import split_protocol

    *chain, last = url.split("::")
    protocols = [part.split("://", 1)[0].lower() for part in chain]  # "simplecache::s3://..."
    protocol, _ = split_protocol(last)
    return [*protocols, (protocol or "file").lower()]


def check_protocols(protocols: object, name: str = "allowed_protocols") -> tuple[str, ...]:
    """``protocols`` as a lower-case tuple of names; TypeError/ValueError on anything else."""
    if isinstance(protocols, str) or not isinstance(protocols, Iterable):
        raise TypeError(f"{name} must be a sequence of protocol names such as {DEFAULT_PROTOCOLS}, got {protocols!r}")
    names = tuple(protocols)
    bad = [p for p in names if not isinstance(p, str) or not p or "://" in p or "::" in p]
    if bad:
        raise ValueError(f"{name} holds {bad!r}; give bare protocol names such as 'file', 's3', 'https'")
    return tuple(p.lower() for p in names)


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO"``), None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _too_large(size: int, max_bytes: int, shown: str) -> str:
    return f"image file too large: {shown} has {size} bytes > max_image_bytes {max_bytes}"


def _read_fd(fd: int, size: int, limit: int | None) -> bytes:
    """Read ``fd`` to its end or to ``limit`` bytes: the whole of a file of ``size`` bytes in one
    call, more in 1 MiB steps (a file that grew, a ``/proc`` file that says 0)."""
    chunks: list[bytes] = []
    got = 0
    want = size + 1 if size > 0 else 1 << 16
    while limit is None or got < limit:
        chunk = os.read(fd, want if limit is None else min(want, limit - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        want = 1 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_local(path: str, max_bytes: int | None, shown: str | None = None) -> ReadResult:
    """Read a local file of at most ``max_bytes`` bytes; anything but a regular file is refused.

    Parameters
    ----------
    path
        A local path (no protocol).
    max_bytes
        Largest file read; None: no cap.
    shown
        How the path is named in reasons (default: ``path``).

    Returns
    -------
    (bytes, None) or (None, reason)
    """
    shown = shown or path
    try:
        info = os.stat(path)  # follows symlinks: what the link points to is what gets read
    except FileNotFoundError:
        return None, f"file not found: {shown}"
    except OSError as err:
        return None, f"cannot read {shown}: {err.strerror or err}"
    kind = _file_kind(info.st_mode)
    if kind is not None:
        return None, f"not a regular file ({kind}): {shown}"
    if max_bytes is not None and info.st_size > max_bytes:
        return None, _too_large(info.st_size, max_bytes, shown)
    try:
        # O_NONBLOCK: a FIFO swapped in since the stat must not block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return None, f"file not found: {shown}"
        return None, f"cannot read {shown}: {err.strerror or err}"
    try:
        opened = os.fstat(fd)  # the file opened, not the one stat'ed: it may have been swapped
        kind = _file_kind(opened.st_mode)
        if kind is not None:
            return None, f"not a regular file ({kind}): {shown}"
        if max_bytes is not None and opened.st_size > max_bytes:
            return None, _too_large(opened.st_size, max_bytes, shown)
        data = _read_fd(fd, opened.st_size, None if max_bytes is None else max_bytes + 1)
    except OSError as err:
        return None, f"cannot read {shown}: {err.strerror or err}"
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        return None, _too_large(len(data), max_bytes, shown)  # a file that grows, a /proc file
    return data, None


# -- remote -------------------------------------------------------------------------------------


def _with_timeout(fn: Callable[[], T], timeout: float | None) -> T:
    """``fn()`` in a daemon thread, TimeoutError after ``timeout`` seconds (the thread is left to
    finish on its own: a blocking call cannot be cancelled, but the task goes on)."""
    if timeout is None:
        return fn()
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as err:
            box.append((False, err))

    thread = threading.Thread(target=target, daemon=True, name="dask-clip-read")
    thread.start()
    thread.join(timeout)
    if not box:
        raise TimeoutError(f"no answer within {timeout:g} s (read_timeout)")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _reason(err: BaseException, url: str, timeout: float | None) -> str:
    if isinstance(err, FileNotFoundError):
        return f"file not found: {url}"
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)) or type(err).__name__ == "FSTimeoutError":
        return f"read timed out after {timeout:g} s (read_timeout): {url}"
    return f"cannot read {url}: {type(err).__name__}: {err}"


async def _read_http(fs: Any, url: str, limit: int | None) -> bytes:
    """GET ``url`` through the filesystem's aiohttp session, stopping after ``limit`` bytes (fsspec's
    own ``cat_file`` reads a whole body, however long, when a server ignores the byte range)."""
    session = await fs.set_session()
    kwargs = dict(getattr(fs, "kwargs", {}) or {})
    async with session.get(fs.encode_url(url), **kwargs) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        response.raise_for_status()
        chunks, size = [], 0
        while limit is None or size < limit:
            chunk = await response.content.read(2**20 if limit is None else min(2**20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)


async def _read_async(
    fs: Any, fs_paths: Sequence[str], limit: int | None, timeout: float | None
) -> list[bytes | BaseException]:
    """Each path's first ``limit`` bytes, concurrently, each within ``timeout`` seconds."""
    http = type(fs).__name__ == "HTTPFileSystem"
    gate = asyncio.Semaphore(_CONCURRENT_READS)

    async def one(path: str) -> bytes:
        async with gate:
            read = _read_http(fs, path, limit) if http else fs._cat_file(path, start=0, end=limit)
            return await asyncio.wait_for(read, timeout)

    return await asyncio.gather(*(one(p) for p in fs_paths), return_exceptions=True)


def _read_sync(fs: Any, fs_path: str, limit: int | None) -> bytes:
    with fs.open(fs_path, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def _read_group(fs: Any, fs_paths: Sequence[str], limit: int | None, timeout: float | None) -> list[Any]:
    """Read every path of one filesystem; an exception in place of each failed read."""
    if getattr(fs, "async_impl", False):
        from fsspec.asyn import sync

        # Each read has its own timeout; this one only guards against a stuck event loop.
        rounds = -(-len(fs_paths) // _CONCURRENT_READS) + 1
        overall = None if timeout is None else timeout * rounds + 5
        try:
            return list(sync(fs.loop, _read_async, fs, fs_paths, limit, timeout, timeout=overall))
        except Exception as err:
            return [err] * len(fs_paths)
    out: list[Any] = []
    for fs_path in fs_paths:
        try:
            out.append(_with_timeout(functools.partial(_read_sync, fs, fs_path, limit), timeout))
        except Exception as err:
            out.append(err)
    return out


def _group_key(url: str) -> str:
    """URLs that share a filesystem instance (and, when creating one fails, share the failure)."""
    head, sep, rest = url.rpartition("::")
    last = rest if sep else url
    protocol, _, path = last.partition("://")
    return f"{head}{sep}{protocol}://{path.split('/', 1)[0]}"


def read_urls(
    urls: Sequence[str], *, max_bytes: int | None, timeout: float | None, storage_options: dict | None = None
) -> list[ReadResult]:
    """Read remote URLs (protocols already checked), at most ``max_bytes`` each, within ``timeout``.

    Returns
    -------
    list of (bytes or None, reason or None)
        In the order of ``urls``.
    """
    from fsspec.core import url_to_fs

    results: list[ReadResult] = [(None, "not read")] * len(urls)
    limit = None if max_bytes is None else max_bytes + 1
    groups: dict[str, list[int]] = {}
    for i, url in enumerate(urls):
        groups.setdefault(_group_key(url), []).append(i)
    for rows in groups.values():
        # Creating a filesystem may connect (ftp, sftp): bounded too. fsspec caches instances.
        opened: list[tuple[int, Any, str]] = []
        for row in rows:
            try:
                fs, fs_path = _with_timeout(functools.partial(url_to_fs, urls[row], **(storage_options or {})), timeout)
            except Exception as err:
                results[row] = (None, _reason(err, urls[row], timeout))
                if isinstance(err, TimeoutError):  # the same host: do not wait again per row
                    for other in rows:
                        if results[other][1] == "not read":
                            results[other] = (None, _reason(err, urls[other], timeout))
                    break
                continue
            opened.append((row, fs, fs_path))
        by_fs: dict[int, tuple[Any, list[int], list[str]]] = {}
        for row, fs, fs_path in opened:
            entry = by_fs.setdefault(id(fs), (fs, [], []))
            entry[1].append(row)
            entry[2].append(fs_path)
        for fs, fs_rows, fs_paths in by_fs.values():
            for row, got in zip(fs_rows, _read_group(fs, fs_paths, limit, timeout)):
                if isinstance(got, BaseException):
                    results[row] = (None, _reason(got, urls[row], timeout))
                elif max_bytes is not None and len(got) > max_bytes:
                    too_large = f"image file too large: {urls[row]} has more than max_image_bytes {max_bytes}"
                    results[row] = (None, too_large)
                else:
                    results[row] = (bytes(got), None)
    return results
