"""Stream the members of a tar archive, whole or one byte range of it, without extracting it.

This is the tar layer under :mod:`dask_clip.io.webdataset`: Python's :mod:`tarfile` in stream
mode over any file object (``fsspec.open``), with three additions.

**Damage is reported, not raised.** A truncated member, a header that is cut short or fails its
checksum, or a stream that stops delivering bytes ends the iteration with a
:class:`StreamDamage` item that says where (``tarfile`` itself silently stops at a bad header
after the first one). Every member read before that point is delivered.

**WebDataset's key rule** (:func:`sample_key`): a member ``dir.v2/000123.seg.png`` belongs to the
sample ``dir.v2/000123`` with the field ``seg.png``: the key is the path up to the first dot *of
the base name*; a dot in a directory name is not a split point. Members whose base name has no
dot, or starts with one, belong to no sample (WebDataset skips them too), as do ``__*__`` names.

**Byte-range splits that read the archive once.** An uncompressed shard of F bytes can be read
as ranges ``[start, end)`` by independent tasks. Each range must resolve to whole samples
without reading what other ranges read, so ownership is defined by one rule that every task
evaluates from the bytes it reads:

- ``f(s)``: the first entry whose own ustar header (the last header block of the entry, after
  any PAX or GNU long-name blocks) starts at byte ``s`` or later;
- ``g(s)``: the first entry after ``f(s) + 1`` whose key differs from the key before it: the
  start of the first sample that begins after both ``f(s)`` and ``f(s) + 1``.

The range ``[start, end)`` owns the entries ``[g(start), g(end))`` (the first range starts at
entry 0; the last ends at the archive's end). A task finds ``f(start)`` without reading from
the archive's beginning: it scans forward from ``start`` for the first 512-byte-aligned block
that is a valid ustar header (checksum and ``ustar`` magic) and streams from there, starting
with the bytes the scan already read. Keys are only compared from entry ``f(s) + 1`` on,
because entry ``f(s)`` itself may be parsed from its last header block alone (its PAX long name
lying before ``s``). Every range reads its own bytes
plus, past ``end``, the rest of the sample that straddles it; the archive is read once in
total, plus, per range, the tail of the member that straddles its start (read by the range
before it too) and tarfile's read-ahead of at most 10 KiB.

**Bounded memory whatever the headers say.** A member larger than ``max_bytes`` is not read:
its entry comes with ``data=None`` and a ``too_large`` reason, and tarfile skips its blocks in
10 KiB reads (a sparse member of 1 GiB in a 20 KB archive, or a ``.tar.gz`` of zeros, costs
time, not memory). Header data that tarfile reads whole (PAX records, GNU long names, sparse
maps) is refused beyond :data:`MAX_HEADER_BYTES` per member.

Limits of splitting (reading whole archives has none of them): a member that is itself a tar
archive can hold blocks that look like headers, and old pre-POSIX (v7) headers without the
``ustar`` magic are never split points (they stay with the range before them). Compressed
archives cannot be split.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["BLOCK", "MAX_HEADER_BYTES", "StreamDamage", "TarEntry", "find_header", "iter_entries", "sample_key"]

BLOCK = tarfile.BLOCKSIZE  # 512: tar headers start at multiples of it
_MAGIC = b"ustar"  # POSIX ("ustar\x0000") and GNU ("ustar  \x00") headers; v7 headers have none
_MAGIC_AT = 257
_SCAN_CHUNK = 64 * 1024  # read size of the scan for a header; what it reads is streamed, not re-read
# WebDataset's tar_file_iterator skips metadata entries named like this (skip_meta).
_META = re.compile(r"__[^/]*__($|/)")
# tarfile's read buffer in stream mode. tarfile copies the rest of its buffer on every read, so
# large buffers cost: iterating a 19 MB shard of 47 kB JPEGs ran at ~1 GB/s with 10-64 KiB and
# ~0.5 GB/s with 1 MiB (2 cores, page cache). The default also bounds a range's read-ahead.
_STREAM_BUFSIZE = tarfile.RECORDSIZE
# Why tarfile stopped: subclasses of tarfile.HeaderError that CPython has defined since 3.2 but
# typeshed does not list. A zero block (end-of-archive marker) or no bytes at all is a clean end.
_CLEAN_END = (getattr(tarfile, "EOFHeaderError"), getattr(tarfile, "EmptyHeaderError"))  # noqa: B009
_TRUNCATED = getattr(tarfile, "TruncatedHeaderError")  # noqa: B009
#: Header bytes (PAX records, GNU long names and sparse maps) that one member may have. tarfile
#: reads them whole and keeps the sparse map as Python ints (~40 bytes a number), so an archive
#: that claims 1 GiB of them would cost several GB; real names and attributes take a few KiB.
MAX_HEADER_BYTES = 1024 * 1024


def sample_key(name: str) -> tuple[str, str] | None:
    """WebDataset's (key, field) of a member name, or None when it belongs to no sample.

    The key is the path up to the first dot of the base name; the field is the rest, lower-cased
    (as WebDataset's ``group_by_keys(lcase=True)`` does).

    Examples
    --------
    >>> sample_key("shard.v2/000123.seg.PNG")
    ('shard.v2/000123', 'seg.png')
    >>> sample_key("README") is None, sample_key("a/.hidden.jpg") is None
    (True, True)
    """
    if _META.match(name):
        return None
    folder, slash, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    if not dot or not stem:
        return None
    return folder + slash + stem, field.lower()


@dataclass(frozen=True)
class TarEntry:
    """One regular-file member of a sample that the caller asked to read (or not).

    Attributes
    ----------
    key, field : str
        :func:`sample_key` of the member name.
    name : str
        The member's path in the archive.
    data : bytes or None
        The member's content; None when it was not asked for (``want`` returned False) or is
        larger than ``max_bytes``.
    offset : int
        Byte offset of the member's first header block in the archive.
    too_large : str or None
        Why ``data`` is None although it was asked for: the member is larger than ``max_bytes``.
    """

    key: str
    field: str
    name: str
    data: bytes | None
    offset: int
    too_large: str | None = None


@dataclass(frozen=True)
class StreamDamage:
    """The archive could not be read past ``offset``; nothing after it in this range is delivered.

    Attributes
    ----------
    offset : int
        Byte offset in the archive where reading stopped.
    reason : str
        What went wrong, for the reason column.
    entry : TarEntry or None
        The member being read when the data ran out (its ``data`` is None), if any.
    """

    offset: int
    reason: str
    entry: TarEntry | None = None


class _HeaderTooLong(tarfile.HeaderError):
    """A member's PAX, long-name or sparse-map data is larger than :data:`MAX_HEADER_BYTES`."""


class _HeaderBudget:
    """The TarFile's stream while one member's headers are processed: reads past the budget raise."""

    def __init__(self, stream: Any, budget: int) -> None:
        self._stream = stream
        self._left = budget

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            raise _HeaderTooLong(
                f"member header data longer than {MAX_HEADER_BYTES} bytes (PAX records, long name or sparse map)"
            )
        data: bytes = self._stream.read(size)
        self._left -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:  # tell(), seek(): the stream's own
        return getattr(self._stream, name)


class _Header(tarfile.TarInfo):
    """A TarInfo that remembers whether its own header block carries the ``ustar`` magic,
    records on the TarFile why reading stopped (``tarfile`` returns None for a bad header past
    the first one instead of raising), and bounds the header data tarfile reads whole."""

    ustar = False

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _Header:
        info = super().frombuf(buf, encoding, errors)
        info.ustar = buf[_MAGIC_AT : _MAGIC_AT + len(_MAGIC)] == _MAGIC
        return info

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _Header:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as err:
            tar.dask_clip_stop = err  # type: ignore[attr-defined]
            raise

    def _proc_member(self, tarfile: Any) -> Any:
        # tarfile's documented hook for subclasses; every header read of this member (a PAX
        # header's records and the headers after it, a long name, sparse blocks) goes through it.
        stream = tarfile.fileobj
        if isinstance(stream, _HeaderBudget):  # the header after a PAX or long-name header
            return super()._proc_member(tarfile)  # type: ignore[misc]  # not in typeshed
        tarfile.fileobj = _HeaderBudget(stream, MAX_HEADER_BYTES)
        try:
            return super()._proc_member(tarfile)  # type: ignore[misc]
        finally:
            tarfile.fileobj = stream


def _is_header(block: bytes) -> bool:
    if block[_MAGIC_AT : _MAGIC_AT + len(_MAGIC)] != _MAGIC:
        return False
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def find_header(fileobj: IO[bytes], start: int) -> tuple[int, bytes] | None:
    """The first 512-aligned block at or after ``start`` that is a ustar header.

    Reads forward from ``start`` (through the rest of a member that straddles it).

    Returns
    -------
    (offset, bytes) or None
        The header's offset in the archive and the bytes already read from there on (so that
        nothing is read twice); None when the archive ends first.
    """
    position = -(-start // BLOCK) * BLOCK
    fileobj.seek(position)
    while True:
        chunk = fileobj.read(_SCAN_CHUNK)
        if not chunk:
            return None
        # Jump between occurrences of the magic instead of testing every block.
        at = chunk.find(_MAGIC)
        while at != -1:
            block_start = at - _MAGIC_AT
            aligned = block_start >= 0 and block_start % BLOCK == 0 and block_start + BLOCK <= len(chunk)
            if aligned and _is_header(chunk[block_start : block_start + BLOCK]):
                return position + block_start, chunk[block_start:]
            at = chunk.find(_MAGIC, at + 1)
        # A chunk is a multiple of 512 bytes unless the file ends, so blocks never straddle two.
        position += len(chunk)
        if len(chunk) % BLOCK:
            return None


class _Prepended:
    """A read-only stream: ``head``, then the rest of ``fileobj`` (all tarfile's stream mode uses)."""

    def __init__(self, head: bytes, fileobj: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._fileobj = fileobj

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._fileobj.read(size)
        if size < 0:
            out = bytes(self._head) + self._fileobj.read()
            self._head = self._head[len(self._head) :]
            return out
        out = bytes(self._head[:size])
        self._head = self._head[len(out) :]
        return out


def _bounded_seek(stream: Any) -> None:
    """Make the stream-mode TarFile's skip stop where the data ends.

    tarfile's ``_Stream.seek`` skips forward in ``bufsize`` reads without looking at what they
    return: a header that claims 1 TiB in a 20 KB archive made it call ``read`` 10**8 times on
    an exhausted stream (minutes of CPU per member, found by benchmarks/fuzz.py). This one
    stops at the end, and tarfile's next read reports the archive truncated.
    """

    def seek(pos: int = 0) -> int:
        if pos < stream.pos:
            raise tarfile.StreamError("seeking backwards is not allowed")
        while stream.pos < pos:
            if not stream.read(min(stream.bufsize, pos - stream.pos)):
                break
        return int(stream.pos)

    stream.seek = seek


def _stop_reason(tar: tarfile.TarFile, offset: int) -> str | None:
    """None for a clean end (end-of-archive blocks, or the data ending between members)."""
    stop = getattr(tar, "dask_clip_stop", None)
    if stop is None or isinstance(stop, _CLEAN_END):
        return None
    if isinstance(stop, _TRUNCATED):
        return f"tar truncated at byte {offset} (in a member header)"
    return f"tar corrupt at byte {offset}: {stop} in the member header there"


def iter_entries(
    fileobj: IO[bytes],
    want: Callable[[str, str], bool],
    *,
    start: int = 0,
    end: int | None = None,
    compressed: bool = False,
    max_bytes: int | None = None,
) -> Iterator[TarEntry | StreamDamage]:
    """Yield the sample members that the byte range ``[start, end)`` of a tar archive owns.

    Parameters
    ----------
    fileobj
        A binary file object positioned anywhere; it must be seekable when ``start > 0``.
    want
        ``want(key, field)``: read this member's content (else it is skipped, ``data=None``).
    start, end
        The byte range (see the module docstring for what a range owns). ``start=0,
        end=None``: the whole archive.
    compressed
        Let tarfile detect gzip/bz2/xz compression (whole archives only).
    max_bytes
        Largest member content to read; a larger wanted member is skipped unread (its entry
        has ``data=None`` and a ``too_large`` reason). None: no limit.

    Yields
    ------
    TarEntry
        Regular-file members with a WebDataset key, in archive order.
    StreamDamage
        At most once, last: why the rest of the range could not be read.

    Raises
    ------
    ValueError
        A byte range of a compressed archive.
    """
    if compressed and (start or end is not None):
        raise ValueError("a compressed archive cannot be read in byte ranges")
    first_range = start == 0
    base = 0
    stream: Any = fileobj
    if not first_range:
        found = find_header(fileobj, start)
        if found is None:
            return
        base, head = found
        stream = _Prepended(head, fileobj)
    try:
        # Not a context manager: closing a stream-mode TarFile closes nothing of ours (the caller
        # owns fileobj), and a generator may be abandoned mid-way.
        tar = tarfile.open(  # noqa: SIM115
            fileobj=stream,
            mode="r|*" if compressed else "r|",
            tarinfo=_Header,
            bufsize=_STREAM_BUFSIZE,
            encoding="utf-8",  # names that are not UTF-8 keep their bytes as surrogates (the caller escapes them)
            errors="surrogateescape",
        )
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:  # opening reads the first member's headers
        if first_range:
            yield StreamDamage(base, f"not a readable tar archive at byte {base}: {type(err).__name__}: {err}")
        return  # past a split point the damage is the previous range's to report
    _bounded_seek(tar.fileobj)
    owning = first_range
    index = 0
    next_range_first: int | None = None  # f(end), as an entry index of this stream
    previous_key: object = None
    while True:
        at = base + tar.offset
        try:
            info = tar.next()
        # ValueError: tarfile's parsers of PAX sparse maps unpack lines without checking them.
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:  # truncated skip, bad PAX header, I/O, zlib
            if owning:
                yield StreamDamage(at, f"tar unreadable from byte {at}: {type(err).__name__}: {err}")
            return
        if info is None:
            reason = _stop_reason(tar, base + tar.offset)
            if reason is not None and owning:
                yield StreamDamage(base + tar.offset, reason)
            return
        tar.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise (as WebDataset)
        header_at = base + info.offset_data - BLOCK
        parsed = sample_key(info.name) if info.isreg() else None
        key = parsed[0] if parsed else None
        if end is not None and next_range_first is None and header_at >= end and getattr(info, "ustar", False):
            next_range_first = index
        changed = index > 0 and key != previous_key
        previous_key = key
        if next_range_first is not None and index >= next_range_first + 2 and changed:
            return  # g(end): the next range's first sample
        if not owning and index >= 2 and changed:
            owning = True  # g(start)
        index += 1
        if not owning or parsed is None:
            continue
        entry = TarEntry(parsed[0], parsed[1], info.name, None, base + info.offset)
        if not want(*parsed):
            yield entry
            continue
        if max_bytes is not None and info.size > max_bytes:  # the size a read would deliver (sparse: expanded)
            reason = f"member {info.name} too large: {info.size} bytes > max_image_bytes {max_bytes}; not read"
            yield TarEntry(parsed[0], parsed[1], info.name, None, base + info.offset, reason)
            continue
        try:
            member = tar.extractfile(info)
            limit = -1 if max_bytes is None else max_bytes + 1
            data = member.read(limit) if member is not None else b""
        except (tarfile.TarError, OSError, EOFError) as err:
            yield StreamDamage(
                base + info.offset,
                f"member {info.name} truncated or unreadable at byte {base + info.offset_data}: "
                f"{type(err).__name__}: {err}; reading stopped there",
                entry,
            )
            return
        yield TarEntry(parsed[0], parsed[1], info.name, data, base + info.offset)
