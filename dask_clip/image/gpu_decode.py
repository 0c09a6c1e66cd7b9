"""Batched JPEG decode with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``).

Same contract as :class:`dask_clip.image.decode.PillowDecoder`: one ``(pixels, reason)`` per row, in
order, never raising for a bad row. Only what nvJPEG decodes like Pillow goes to the GPU:

- baseline JPEG (Pillow says ``format == "JPEG"``) in mode ``RGB`` or ``L`` (not Adobe RGB-coded),
  ending with the EOI marker (a truncated file goes to Pillow, which reports it as the CPU path
  does), with at most ``max_pixels`` pixels and at most ``max_bytes`` decoded bytes (read from
  the header without decoding);
- progressive JPEGs go to Pillow too: torchvision decodes them one at a time with CPU Huffman
  decoding under a process-wide lock (:data:`PROGRESSIVE_ON_GPU` turns that off, for measuring);
- everything else (PNG, WebP, CMYK/YCCK JPEG, MPO, oversized, undecodable) takes the CPU path,
  :func:`dask_clip.image.decode.decode_bytes`, and so gets the same pixels or the same error.

A batch that nvJPEG rejects (one bad image fails the whole call) is bisected, so one bad image
costs log2(batch) extra calls, not a call per image; an image that fails alone falls back to
Pillow. Each nvJPEG call holds at most ``max_bytes`` of decoded pixels. EXIF orientation is not
applied (Pillow does not transpose either). nvJPEG's chroma upsampling differs slightly from
libjpeg's "fancy" upsampling and torchvision exposes no switch for it, so GPU-decoded pixels
differ by a few levels near colour edges: ``benchmarks/gpu_check.py`` reports the resulting
parity figure.

``torchvision.io.decode_jpeg`` is deprecated in torchvision 0.29 in favour of TorchCodec's
decoders (``torchcodec.decoders``, nvJPEG with EXIF support); the dependency is capped below
the release that removes it (see docs/gpu.md).

All functions also run with ``device="cpu"`` (torchvision's libjpeg decoder), which is how
the routing, fallback, bisection and row alignment are tested without a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from .decode import DEFAULT_MAX_IMAGE_PIXELS, BaseDecoder, DecodeResult, decode_bytes

__all__ = [
    "GPU_DECODE_MODES",
    "PROGRESSIVE_ON_GPU",
    "FallbackPool",
    "JpegHeader",
    "NvjpegDecoder",
    "check_device_decode",
    "decode_jpegs",
    "fallback_pool",
    "jpeg_header",
    "jpeg_on_device",
]

logger = logging.getLogger(__name__)

#: Pillow modes of JPEGs that nvJPEG's RGB output matches (CMYK/YCCK go to Pillow).
GPU_DECODE_MODES = ("RGB", "L")
#: Send progressive JPEGs to nvJPEG (torchvision decodes them serially, Huffman on the CPU).
PROGRESSIVE_ON_GPU = False
# Images per nvJPEG call at most: bounds the decoder's own scratch memory.
_DECODE_BATCH = 128
_EOI = b"\xff\xd9"
_QUIET = threading.Event()


def _quiet_deprecation() -> None:
    """torchvision 0.29 warns on every decode_jpeg call ("use TorchCodec"). Filtered once per
    process: ``warnings.catch_warnings()`` in concurrent decode threads is not thread-safe."""
    if not _QUIET.is_set():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*decode_jpeg.*")
        _QUIET.set()


@dataclass(frozen=True)
class JpegHeader:
    """What the header of an encoded image says, read without decoding it."""

    width: int
    height: int
    on_device: bool  # nvJPEG decodes it like Pillow would


def jpeg_header(
    data: object, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, max_bytes: int | None = None
) -> JpegHeader | None:
    """Read an image's header; None when it is not a complete JPEG Pillow can open.

    Parameters
    ----------
    data
        One row's encoded bytes (``bytes``/``bytearray``/``memoryview``), or anything else.
    max_pixels, max_bytes
        Images above either limit are not for the GPU (the CPU path refuses them, or decodes a
        JPEG at reduced DCT scale, with its own message).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 4:
        return None
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8" or bytes(view[-2:]) != _EOI:
        return None  # not a JPEG, or truncated / trailing data: Pillow decides
    try:
        with Image.open(io.BytesIO(data)) as image:  # header only; no pixel is decoded
            width, height = image.size
            # Adobe transform 0: RGB-coded components, which only libjpeg is sure to honour.
            supported = (
                image.format == "JPEG" and image.mode in GPU_DECODE_MODES and image.info.get("adobe_transform") != 0
            )
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    except Exception:
        return None
    fits = (max_pixels is None or width * height <= max_pixels) and (
        max_bytes is None or width * height * 3 <= max_bytes
    )
    return JpegHeader(width, height, supported and fits and (PROGRESSIVE_ON_GPU or not progressive))


def jpeg_on_device(data: object, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Whether nvJPEG should decode these bytes (else Pillow does, as on the CPU path)."""
    header = jpeg_header(data, max_pixels=max_pixels)
    return header is not None and header.on_device


def _byte_tensor(data: bytes | bytearray | memoryview) -> torch.Tensor:
    # decode_jpeg wants a CPU uint8 tensor; a bytearray copy is writable (torch warns on
    # read-only buffers) and costs microseconds next to the decode.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _stream_barrier(device: torch.device) -> None:
    """Wait, on the host, until the caller's CUDA stream has run everything queued on it.

    torchvision allocates the decode outputs on the caller's stream, and nvJPEG does not order
    its writes after the work queued there: a block freed by a kernel still queued (an earlier
    group's pixels, a crop) can be handed to the decoder and overwritten under that kernel
    (pytorch/vision#9606, 134 of 200 iterations on an H100; torchcodec#1634 adds the same
    ``cudaStreamSynchronize`` before its batched hardware decode). ``decode_jpeg`` blocks the
    host until its stream is done anyway, so the wait moves earlier rather than being added.
    """
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _decode_list(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_deprecation()
    _stream_barrier(device)  # before every call, the bisection's too
    return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False))


def _bisect(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a list; when the batched call fails, decode each half the same way."""
    try:
        return list(_decode_list(tensors, device))
    except Exception as err:
        if len(tensors) == 1:
            return [None]
        logger.debug("dask_clip: batched JPEG decode of %d failed (%s); bisecting", len(tensors), err)
        half = len(tensors) // 2
        return _bisect(tensors[:half], device) + _bisect(tensors[half:], device)


def decode_jpegs(
    blobs: Sequence[bytes | bytearray | memoryview], device: torch.device | str
) -> list[torch.Tensor | None]:
    """Decode JPEGs in one batched call; a failing batch is bisected down to the bad images.

    Parameters
    ----------
    blobs
        Encoded JPEGs (already routed by :func:`jpeg_header`).
    device
        ``cuda:N`` for nvJPEG, or ``cpu`` (libjpeg; used by the tests).

    Returns
    -------
    list of torch.Tensor or None
        uint8 (H, W, 3) RGB on ``device`` (a view of the decoder's (3, H, W) output), or None
        where the image failed on its own: the caller falls back to Pillow.
    """
    tensors = [_byte_tensor(b) for b in blobs]
    if not tensors:
        return []
    return [None if t is None else t.permute(1, 2, 0) for t in _bisect(tensors, torch.device(device))]


class FallbackPool:
    """Pillow threads shared by every task thread of the process, for the images nvJPEG does not
    decode (progressive, PNG, WebP, CMYK, what it refused).

    Pillow releases the GIL while it decodes, so the fallbacks of one chunk decode in parallel
    instead of one after another on the task's decode thread. At most ``threads`` decoded (or
    decoding) images wait in the pool at once, in the whole process, each holding one slot, plus
    the one each caller has just been handed: memory stays about one full-size image per decode
    thread. A caller submits ahead only while a slot is free, and waits for one only when it holds
    none (so two callers cannot wait on each other).

    Parameters
    ----------
    threads
        Pool size: the cores per GPU (:func:`fallback_threads`).
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dask-clip-pillow")
        self._slots = threading.BoundedSemaphore(self.threads)

    def map_ordered(self, fn: Callable[[object], DecodeResult], items: Sequence[object]) -> Iterator[DecodeResult]:
        """``fn`` of each item, computed in the pool, yielded in order."""
        pending: collections.deque[Future[DecodeResult]] = collections.deque()
        ahead = iter(items)
        left = len(items)
        try:
            while left:
                submitted = len(pending)
                while submitted < left and self._slots.acquire(blocking=not pending):
                    pending.append(self._pool.submit(fn, next(ahead)))
                    submitted += 1
                try:
                    result = pending.popleft().result()
                finally:
                    self._slots.release()
                left -= 1
                yield result
        finally:  # a caller that stops early frees its slots
            for future in pending:
                future.cancel()
                with contextlib.suppress(Exception):
                    future.result()
                self._slots.release()


def fallback_threads() -> int:
    """The cores per GPU of this node: the worker's usable cores over the GPUs torch sees (a
    dask-cuda worker sees every GPU of the node, its own first)."""
    from ..worker_setup import cpu_count

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return max(1, cpu_count() // max(1, gpus))


_FALLBACK_POOL: FallbackPool | None = None
_FALLBACK_LOCK = threading.Lock()


def fallback_pool() -> FallbackPool:
    """The process's :class:`FallbackPool`, made on first use."""
    global _FALLBACK_POOL
    if _FALLBACK_POOL is None:
        with _FALLBACK_LOCK:
            if _FALLBACK_POOL is None:
                _FALLBACK_POOL = FallbackPool(fallback_threads())
    return _FALLBACK_POOL


_CHECKED: set[torch.device] = set()
# An 8 x 8 grey baseline JPEG (Pillow, quality 75): what the load check decodes.
_PROBE_JPEG: bytes | None = None


def _probe_jpeg() -> bytes:
    global _PROBE_JPEG
    if _PROBE_JPEG is None:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="JPEG", quality=75)
        _PROBE_JPEG = buffer.getvalue()
    return _PROBE_JPEG


def check_device_decode(device: torch.device) -> None:
    """Decode one tiny JPEG on ``device`` once per process; raise if torchvision cannot.

    A torchvision without ``decode_jpeg``, without batched device decoding (< 0.20) or built
    without nvJPEG would otherwise fail every call, and every image would silently take the
    Pillow fallback. Checked when the decoder is made (once per device), so the task fails with
    the reason instead.

    Raises
    ------
    RuntimeError
        With what failed and what to do (install a CUDA torchvision, or ``decode_device="cpu"``).
    """
    if device in _CHECKED:
        return
    try:
        from ..runtime.torchvision_import import import_torchvision

        import_torchvision()  # without TorchDynamo where nothing imported torchvision yet
        import torchvision.io

        if not hasattr(torchvision.io, "decode_jpeg"):
            raise AttributeError("torchvision.io has no decode_jpeg")
        pixels = _decode_list([_byte_tensor(_probe_jpeg())], device)[0]
        if tuple(pixels.shape) != (3, 8, 8) or pixels.device.type != device.type:
            raise RuntimeError(f"decode_jpeg returned {tuple(pixels.shape)} on {pixels.device}, expected (3, 8, 8)")
    except Exception as err:
        raise RuntimeError(
            f"decode_device='auto' decodes JPEGs with torchvision.io.decode_jpeg on {device}, which failed here "
            f"({type(err).__name__}: {err}). Install torchvision >= 0.20 built for this CUDA "
            "(pip install 'dask-clip[gpu-cu12]' or 'dask-clip[gpu-cu13]'), or pass decode_device='cpu' "
            "to decode with Pillow"
        ) from err
    _CHECKED.add(device)


class NvjpegDecoder(BaseDecoder):
    """A :class:`~dask_clip.image.decode.Decoder`: JPEGs on ``device`` (nvJPEG on CUDA), the rest with Pillow.

    Runs on the caller's current CUDA stream (the pipeline's decode stream); the caller hands the
    results to the model's stream with an event.

    Parameters
    ----------
    device
        Where JPEGs are decoded: ``cuda:N``, or ``cpu`` (torchvision's libjpeg, which is how the
        routing, fallback, bisection and row alignment are tested without a GPU).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        check_device_decode(self.device)

    def decode_groups(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> Iterator[list[tuple[int, DecodeResult]]]:
        """nvJPEG calls of at most ``max_bytes`` decoded bytes and 128 images, then the Pillow
        fallbacks (decoded by the shared :class:`FallbackPool`), one per group, in row order.
        Pixels are uint8 (H, W, 3): torch tensors on ``device`` from nvJPEG, NumPy arrays from
        Pillow."""
        headers = [jpeg_header(b, max_pixels=max_pixels, max_bytes=max_bytes) for b in blobs]
        fallback = [i for i, h in enumerate(headers) if h is None or not h.on_device]
        group: list[int] = []
        group_bytes = 0
        for i, header in enumerate(headers):
            if header is None or not header.on_device:
                continue
            size = header.width * header.height * 3
            if group and (len(group) == _DECODE_BATCH or (max_bytes is not None and group_bytes + size > max_bytes)):
                yield from self._decode_group(blobs, group, fallback)
                group, group_bytes = [], 0
            group.append(i)
            group_bytes += size
        if group:
            yield from self._decode_group(blobs, group, fallback)
        # The CPU path for everything else and for what nvJPEG refused: same pixels, same errors,
        # decoded by the process's shared Pillow threads, handed over in row order.
        todo = sorted(fallback)
        decode = functools.partial(decode_bytes, max_pixels=max_pixels, max_bytes=max_bytes)
        for i, result in zip(todo, fallback_pool().map_ordered(decode, [blobs[i] for i in todo])):
            yield [(i, result)]

    def _decode_group(
        self, blobs: Sequence[object], members: list[int], fallback: list[int]
    ) -> Iterator[list[tuple[int, DecodeResult]]]:
        decoded = decode_jpegs([blobs[i] for i in members], self.device)  # type: ignore[misc]
        done: list[tuple[int, DecodeResult]] = []
        for i, pixels in zip(members, decoded):
            if pixels is None:
                fallback.append(i)
            else:
                done.append((i, (pixels, None)))
        if done:
            yield done
