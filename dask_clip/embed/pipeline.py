"""From rows to embeddings: chunks through the input stage and the model, row errors, heads.

A partition's rows go through in chunks of a few hundred. The input stage
(:func:`dask_clip.image.prepare.prepare_chunk`) turns a chunk into the model's input — decoded,
resized and cropped image by image, so full-size images never pile up — and the model stage
embeds it in batches of ``batch_size`` and runs the heads on the same batches. How the two
stages share the machine is the *schedule*:

- ``"overlap"`` (GPUs): a thread prepares the next chunk while the model runs the current one
  (decode, resize and normalise run on a CUDA stream of their own; an event hands the input
  to the model's stream). The decode thread is made once per task thread and kept, and the
  model stage runs on the task thread's own stream, not the default stream all task threads
  would share. One synchronisation per partition, of that stream only.
- ``"serial"`` (CPUs): the chunk is prepared with every core (one decode thread per torch
  thread), then the model runs with every core. Beside a busy OpenMP pool, a decode thread
  takes a core from the model's barrier-synchronised threads, which then wait for the slowest
  one; taking turns loses nothing to that (measured in benchmarks/README.md).

A row that cannot be decoded gets a reason instead of an embedding (or raises
:class:`~dask_clip.errors.ImageDecodeError` with ``on_error="raise"``); every other row keeps
its place.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ImageDecodeError
from ..heads import HeadFunction, HeadInputs
from ..image.decode import Decoder
from ..image.prepare import PreparedChunk, decode_stream, prepare_chunk
from ..image.sources import ImageSource
from ..models.loaded import LoadedModel
from ..runtime import caches
from ..validation import SCHEDULES
from .infer import encode_inputs

__all__ = ["MIN_ROWS_PER_CHUNK", "SCHEDULES", "RowsResult", "embed_rows"]

logger = logging.getLogger(__name__)

# Rows prepared at once: bounds a partition's crops in memory (256 x 150 KB at 224 px).
MIN_ROWS_PER_CHUNK = 256


@dataclass
class RowsResult:
    """What :func:`embed_rows` returns for N rows, M of which have an embedding.

    Attributes
    ----------
    embeddings : torch.Tensor
        float32 (M, D), the rows that have an image, in order: on the host when asked for
        (``to_host=True``), else on the model's device.
    valid : numpy.ndarray
        bool (N,), True where a row has an embedding.
    errors : list of str or None
        N entries: why a row has no embedding, else None.
    heads : dict of str to list
        Per head column, the values of the M valid rows, one entry per forward batch (torch
        tensors, or lists of strings); :meth:`head_values` joins them.
    seconds : dict of str to float
        Time per stage (fetch, decode+resize, model, heads, wait), for ``verbose`` logs and
        benchmarks; stages of the two schedules' threads overlap, so they do not add up to the
        wall time.
    hashes : numpy.ndarray or None
        ``phash=True`` only: uint64 (N,), each row's pHash (0 where ``hashed`` is False).
    hashed : numpy.ndarray or None
        ``phash=True`` only: bool (N,), True where the row's image was decoded and hashed.
    """

    embeddings: torch.Tensor
    valid: np.ndarray
    errors: list[str | None]
    heads: dict[str, list[Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    hashes: np.ndarray | None = None
    hashed: np.ndarray | None = None

    def head_values(self, column: str) -> Any:
        """One head's values for the M valid rows: a tensor (M, ...) or a list of M strings."""
        parts = self.heads.get(column, [])
        if parts and isinstance(parts[0], torch.Tensor):
            return torch.cat([p.cpu() if p.device.type != "cpu" else p for p in parts])
        return [value for part in parts for value in part]


def _chunks(n: int, chunk: int) -> list[int]:
    return list(range(0, n, chunk))


_PREPARE_THREADS = threading.local()
_PREPARE_POOLS: list[ThreadPoolExecutor] = []  # every task thread's, so that teardown can stop them
_POOLS_LOCK = threading.Lock()


def _prepare_pool() -> ThreadPoolExecutor:
    """The calling (task) thread's decode thread, started once and kept: a new thread per
    partition would create a new decode stream each time, rotating through torch's small pool
    of streams (and sharing them with other task threads)."""
    pool = getattr(_PREPARE_THREADS, "pool", None)
    if pool is None or pool not in _PREPARE_POOLS:  # none yet, or stopped by _stop_prepare_pools
        pool = _PREPARE_THREADS.pool = ThreadPoolExecutor(1, thread_name_prefix="dask-clip-prepare")
        with _POOLS_LOCK:
            _PREPARE_POOLS.append(pool)
    return pool


def _stop_prepare_pools() -> None:
    """Stop the decode threads of every task thread (each starts a new one on its next partition)."""
    with _POOLS_LOCK:
        pools = list(_PREPARE_POOLS)
        _PREPARE_POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=False)


caches.register("decode threads", _stop_prepare_pools)


def embed_rows(
    rows: Sequence[object],
    source: ImageSource,
    *,
    model: LoadedModel,
    decoder: Decoder,
    batch_size: int,
    normalize: bool = True,
    on_error: str = "null",
    index: Sequence[object] | None = None,
    heads: dict[str, HeadFunction] | None = None,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    chunk_rows: int | None = None,
    schedule: str = "auto",
    decode_threads: int | None = None,
    to_host: bool = True,
    phash: bool = False,
) -> RowsResult:
    """Decode and embed one partition's rows; run the heads on the same batches.

    Parameters
    ----------
    rows
        One object per row, as ``source.rows`` gives them (bytes, paths, pixels or None).
    source
        The image source that fetches them.
    model
        The worker's loaded model.
    decoder
        Pillow, or nvJPEG with a Pillow fallback.
    batch_size
        Images per forward pass.
    normalize
        L2-normalise the returned embeddings (heads always see unit-length embeddings).
    on_error
        ``"null"``: a bad row gets a reason; ``"raise"``: raise for the first bad row.
    index
        The rows' index labels, named by :class:`~dask_clip.errors.ImageDecodeError`.
    heads
        Output column -> loaded head.
    max_pixels, max_bytes
        Decompression-bomb limit; decoded bytes one image may take.
    chunk_rows
        Rows prepared at once; default: the largest multiple of ``batch_size`` up to 256.
    schedule
        ``"overlap"``, ``"serial"``, or ``"auto"``: overlap on GPUs, serial on CPUs.
    decode_threads
        Decode threads of the serial schedule; default: torch's thread count.
    to_host
        Return the embeddings on the host (copied asynchronously, one synchronisation at the end).
    phash
        Also hash every decoded image (pHash, from the pixels decoded for the embedding; no
        second decode): ``RowsResult.hashes``.

    Returns
    -------
    RowsResult
    """
    n = len(rows)
    heads = heads or {}
    device = model.device
    result = RowsResult(
        embeddings=torch.zeros((0, model.embed_dim), dtype=torch.float32),
        valid=np.zeros(n, dtype=bool),
        errors=[None] * n,
        heads={column: [] for column in heads},
    )
    if phash:
        result.hashes, result.hashed = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
    if n == 0:
        return result
    chunk = chunk_rows or batch_size * max(1, MIN_ROWS_PER_CHUNK // batch_size)
    if schedule == "auto":
        schedule = "overlap" if device.type == "cuda" else "serial"
    on_gpu = device.type == "cuda"
    threads = 1 if schedule == "overlap" else (decode_threads or torch.get_num_threads())

    prepare_kwargs: dict[str, Any] = dict(
        source=source,
        decoder=decoder,
        cfg=model.preprocess,
        device=device,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        threads=threads,
        normalize_inputs=on_gpu,
        phash=phash,
    )

    def prepare(start: int) -> PreparedChunk:
        stream = torch.cuda.stream(decode_stream(device)) if on_gpu else nullcontext()
        with stream, torch.inference_mode():
            return prepare_chunk(rows[start : start + chunk], start, **prepare_kwargs)

    caller = torch.cuda.current_stream(device) if on_gpu else None
    # The model stage on this task thread's own stream (created once per thread).
    with torch.cuda.stream(decode_stream(device)) if on_gpu else nullcontext():
        _embed_chunks(
            rows, result, prepare, chunk, schedule, model, batch_size, normalize, heads, on_error, index, to_host
        )
        if model.input_dtype == torch.float16 and len(result.embeddings):
            _rerun_overflow(rows, result, prepare_kwargs, model, batch_size, normalize, heads)
        if caller is not None:
            # What is handed back was made on this stream: finished before the caller reads it,
            # and its blocks kept from reuse on this stream until the caller's is done with them.
            torch.cuda.current_stream(device).synchronize()
            for part in [result.embeddings, *(p for parts in result.heads.values() for p in parts)]:
                if isinstance(part, torch.Tensor) and part.is_cuda:
                    part.record_stream(caller)
    return result


def _embed_chunks(
    rows: Sequence[object],
    result: RowsResult,
    prepare: Any,
    chunk: int,
    schedule: str,
    model: LoadedModel,
    batch_size: int,
    normalize: bool,
    heads: dict[str, HeadFunction],
    on_error: str,
    index: Sequence[object] | None,
    to_host: bool,
) -> None:
    """The chunks through the model stage, on the current stream; fills ``result``."""
    n = len(rows)
    device = model.device
    on_gpu = device.type == "cuda"
    host = torch.empty((n, model.embed_dim), dtype=torch.float32, pin_memory=on_gpu and to_host)
    parts: list[torch.Tensor] = []
    filled = 0
    seconds = result.seconds
    for prepared in _prepared_chunks(prepare, _chunks(n, chunk), schedule, seconds):
        for k, v in prepared.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
        for row, reason in prepared.errors:
            if on_error == "raise":
                raise ImageDecodeError(index[row] if index is not None else row, reason)
            result.errors[row] = reason
        if result.hashes is not None and result.hashed is not None and prepared.hashes:
            where = np.array([row for row, _ in prepared.hashes], dtype=np.int64)
            result.hashes[where] = np.array([h for _, h in prepared.hashes], dtype=np.uint64)
            result.hashed[where] = True
        if prepared.inputs is None:
            continue
        if prepared.event is not None:  # the decode stream's work, before the model reads it
            torch.cuda.current_stream(device).wait_event(prepared.event)
            prepared.inputs.record_stream(torch.cuda.current_stream(device))
        result.valid[prepared.positions] = True
        out = _model_stage(prepared, model, batch_size, normalize, heads, result)
        if to_host:
            host[filled : filled + len(out)].copy_(out, non_blocking=on_gpu)
        else:
            parts.append(out)
        filled += len(out)
    if to_host:
        if on_gpu:
            torch.cuda.current_stream(device).synchronize()  # the one wait of the partition
        result.embeddings = host[:filled]
    elif parts:
        result.embeddings = torch.cat(parts)
    else:
        result.embeddings = torch.zeros((0, model.embed_dim), dtype=torch.float32, device=device)


def _model_stage(
    prepared: PreparedChunk,
    model: LoadedModel,
    batch_size: int,
    normalize: bool,
    heads: dict[str, HeadFunction],
    result: RowsResult,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Embed one prepared chunk and run the heads on it; returns the (m, D) output rows."""
    assert prepared.inputs is not None
    seconds = result.seconds
    started, cpu = time.perf_counter(), time.process_time()
    features = encode_inputs(
        model, prepared.inputs, batch_size=batch_size, normalized=prepared.normalized, autocast_dtype=autocast_dtype
    )
    unit = torch.nn.functional.normalize(features, dim=-1)
    seconds["model"] = seconds.get("model", 0.0) + time.perf_counter() - started
    seconds["model cpu"] = seconds.get("model cpu", 0.0) + time.process_time() - cpu  # all its threads
    if heads:
        started = time.perf_counter()
        head_inputs = HeadInputs(image=unit)
        with torch.inference_mode():
            for column, head in heads.items():
                result.heads[column].append(head(head_inputs))
        seconds["heads"] = seconds.get("heads", 0.0) + time.perf_counter() - started
    return unit if normalize else features


def _rerun_overflow(
    rows: Sequence[object],
    result: RowsResult,
    prepare_kwargs: dict[str, Any],
    model: LoadedModel,
    batch_size: int,
    normalize: bool,
    heads: dict[str, HeadFunction],
) -> None:
    """Recompute under bf16 autocast the rows whose fp16 embedding overflowed (inf/NaN).

    Checked once per partition, after the one synchronisation: fp16's range (65504) is what
    the default GPU precision gives up for its finer rounding; bf16 has float32's range.
    """
    finite = torch.isfinite(result.embeddings).all(dim=1).cpu().numpy()
    if finite.all():
        return
    positions = np.flatnonzero(result.valid)[~finite]
    logger.warning(
        "dask_clip: %d embedding(s) overflowed in fp16; recomputing them under bf16 autocast "
        "(precision='pure_bf16' or 'bf16' avoids fp16)",
        len(positions),
    )
    redo = prepare_chunk([rows[p] for p in positions], 0, **{**prepare_kwargs, "phash": False})
    if redo.inputs is None or len(redo.positions) != len(positions):
        return  # the rows decoded before: they decode again (kept as they are otherwise)
    if redo.event is not None:
        torch.cuda.current_stream(model.device).wait_event(redo.event)
    fixed_heads = RowsResult(result.embeddings[:0], result.valid[:0], [], {c: [] for c in heads})
    out = _model_stage(redo, model, batch_size, normalize, heads, fixed_heads, autocast_dtype=torch.bfloat16)
    bad = torch.from_numpy(~finite).to(result.embeddings.device)
    result.embeddings[bad] = out.to(result.embeddings.device, torch.float32)
    for column in heads:
        values = result.head_values(column)
        if isinstance(values, torch.Tensor):
            values[bad.to(values.device)] = fixed_heads.head_values(column).to(values.device, values.dtype)
            result.heads[column] = [values]
        else:
            for k, value in zip(np.flatnonzero(~finite).tolist(), fixed_heads.head_values(column)):
                values[k] = value
            result.heads[column] = [values]


def _prepared_chunks(
    prepare: Any, starts: list[int], schedule: str, seconds: dict[str, float]
) -> Iterator[PreparedChunk]:
    """The chunks in order; with ``"overlap"``, the next one is prepared in a thread meanwhile."""
    if schedule == "serial":
        for start in starts:
            yield prepare(start)
        return
    pool = _prepare_pool()
    pending = pool.submit(prepare, starts[0])
    try:
        for i in range(len(starts)):
            started = time.perf_counter()
            prepared = pending.result()
            seconds["wait"] = seconds.get("wait", 0.0) + time.perf_counter() - started
            if i + 1 < len(starts):
                pending = pool.submit(prepare, starts[i + 1])
            yield prepared
    finally:  # a failed or abandoned partition leaves no chunk running into the next one
        pending.cancel()
        with contextlib.suppress(Exception):
            pending.result()
