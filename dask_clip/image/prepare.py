"""The input stage: rows of one chunk -> the model's input (resized crops), never at full size.

Every image is decoded, resized and centre-cropped to the model's input size as soon as it is
decoded; only the small uint8 crop (3 x 224 x 224 = 150 KB for most CLIP models) is kept. So a
chunk of a partition holds its encoded bytes and its crops, and at most one full-size image per
decode thread (nvJPEG: one call's images, at most ``max_bytes`` of them) — memory is bounded by
the decode budget, not by how large the images are or how many there are.

On a GPU the stage runs on a CUDA stream of its own (one per thread, kept for the thread's life);
the crops are normalised there and handed to the model's stream with an event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..worker_setup import release_freed_memory
from .decode import Decoder
from .preprocess import PreprocessConfig, normalize, resize_crop, to_chw
from .sources import ImageSource

__all__ = ["PreparedChunk", "decode_stream", "prepare_chunk"]

_STREAMS = threading.local()
# Images up to this many pixels are made HWC-contiguous before the resize (see _chw_on).
_COPY_PIXELS_AT_MOST = 4_000_000


def decode_stream(device: torch.device) -> Any:
    """This thread's CUDA stream for ``device``, created once (not one per chunk: torch caches
    memory blocks per stream and rotates a small pool of them).

    Used by the decode thread (its input stage) and by each task thread (its model stage), so
    task threads sharing a GPU do not queue on the legacy default stream behind each other, and
    the partition's one synchronisation waits for its own work only."""
    streams = getattr(_STREAMS, "by_device", None)
    if streams is None:
        streams = _STREAMS.by_device = {}
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]


@dataclass
class PreparedChunk:
    """One chunk of rows, ready for the model.

    Attributes
    ----------
    start : int
        Position of the chunk's first row in the partition.
    positions : numpy.ndarray
        int64 (m,), ascending: the rows (partition positions) that have a crop.
    inputs : torch.Tensor or None
        (m, 3, H, W) on the model's device: uint8 crops, or (``normalized``) float32 model input.
    normalized : bool
        Whether ``inputs`` is already normalised.
    errors : list of (int, str)
        The rows without a crop and why, ascending.
    event : torch.cuda.Event or None
        Recorded on the decode stream after ``inputs`` was written (CUDA only).
    hashes : list of (int, int)
        ``phash=True`` only: (partition position, pHash as an unsigned 64-bit int) of each row
        that has a crop, from the same decoded pixels (:func:`dask_clip.dedup.phash.phash_pixels`).
    seconds : dict of str to float
        Wall seconds per step (fetch, decode + resize) and the decode threads' CPU seconds.
    """

    start: int
    positions: np.ndarray
    inputs: torch.Tensor | None
    normalized: bool
    errors: list[tuple[int, str]]
    event: Any = None
    seconds: dict[str, float] = field(default_factory=dict)
    hashes: list[tuple[int, int]] = field(default_factory=list)


def _as_tensor(pixels: object) -> torch.Tensor:
    """uint8 (H, W, 3) pixels as a tensor, without a copy (read-only views too, through DLPack;
    the stage only reads them)."""
    if isinstance(pixels, torch.Tensor):
        return pixels
    array = np.asarray(pixels)
    return torch.from_dlpack(array) if not array.flags.writeable else torch.from_numpy(array)


def _chw_on(pixels: object, device: torch.device) -> torch.Tensor:
    """uint8 (3, H, W) on ``device``, laid out for the resize.

    On the CPU, HWC-contiguous (channels-last CHW) is what torch's uint8 antialiased resize reads
    fastest, so Pillow's RGBX view of a photo is copied once (0.2 ms at 800 x 600; the resize is
    then 4 times faster); a very large image is resized from the view instead: no second
    full-size copy. CUDA's resize computes in float from any layout: no copy there.
    """
    image = _as_tensor(pixels).to(device, non_blocking=True)
    if device.type == "cpu" and image.shape[0] * image.shape[1] <= _COPY_PIXELS_AT_MOST:
        image = image.contiguous()
    return to_chw(image)


def _crop(pixels: object, device: torch.device, cfg: PreprocessConfig) -> torch.Tensor:
    """The model-size uint8 (3, h, w) crop of one decoded image, on ``device``.

    On a GPU, pixels decoded on the host (Pillow's fallbacks) are resized there, and only the
    crop crosses to the device, from pinned memory without blocking: the full-size image never
    takes a pageable host-to-device copy (which can block the host) nor GPU memory. An image
    whose resize runs out of GPU memory is resized on the host the same way.
    """
    on_host = not (isinstance(pixels, torch.Tensor) and pixels.device.type != "cpu")
    if device.type == "cuda" and on_host:
        return _host_crop_to(pixels, device, cfg)
    try:
        return resize_crop(_chw_on(pixels, device), cfg)
    except Exception as err:
        from ..embed.infer import is_out_of_memory

        if device.type != "cuda" or not is_out_of_memory(err):
            raise
    torch.cuda.empty_cache()  # out of the except block: the failed resize's memory is free
    return _host_crop_to(pixels.cpu() if isinstance(pixels, torch.Tensor) else pixels, device, cfg)


def _host_crop_to(pixels: object, device: torch.device, cfg: PreprocessConfig) -> torch.Tensor:
    crop = resize_crop(_chw_on(pixels, torch.device("cpu")), cfg)
    return crop.pin_memory().to(device, non_blocking=True)


# After an image with more decoded bytes than this, freed memory is handed back to the system
# (worker_setup.release_freed_memory): a few such images must not leave gigabytes mapped.
RELEASE_AFTER_BYTES = 64 * 2**20


def _crop_share(
    payloads: Sequence[object],
    indices: Sequence[int],
    *,
    encoded: bool,
    decoder: Decoder,
    cfg: PreprocessConfig,
    device: torch.device,
    max_pixels: int | None,
    max_bytes: int | None,
    phash: bool = False,
) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str]], float, list[tuple[int, int]]]:
    """Decode, resize and crop the ``indices`` of ``payloads`` (one thread's share); with
    ``phash``, also hash each decoded image while its full-size pixels are in memory."""
    started = time.thread_time()
    crops: list[tuple[int, torch.Tensor]] = []
    errors: list[tuple[int, str]] = []
    hashes: list[tuple[int, int]] = []
    if encoded:
        groups = decoder.decode_groups([payloads[i] for i in indices], max_pixels=max_pixels, max_bytes=max_bytes)
    else:  # pixels: already checked by the source's fetch
        groups = iter([[(k, (payloads[i], None)) for k, i in enumerate(indices)]])
    for group in groups:
        for k, (pixels, reason) in group:
            if pixels is None:
                errors.append((indices[k], reason or "unknown"))
                continue
            large = pixels.shape[0] * pixels.shape[1] * 3 > RELEASE_AFTER_BYTES
            crops.append((indices[k], _crop(pixels, device, cfg)))
            if phash:
                hashes.append((indices[k], _phash(pixels)))
            del pixels
            if large and device.type == "cpu":
                release_freed_memory()
        del group  # the group's full-size pixels go before the next group is decoded
    return crops, errors, time.thread_time() - started, hashes


def _phash(pixels: object) -> int:
    """pHash of one decoded uint8 (H, W, 3) image (GPU-decoded pixels are copied to the host:
    the hash's resize is Pillow's, for bits identical to ``imagehash``)."""
    from ..dedup.phash import phash_pixels

    if isinstance(pixels, torch.Tensor):
        pixels = pixels.cpu().numpy()
    return int(phash_pixels([pixels])[0])


def prepare_chunk(
    rows: Sequence[object],
    start: int,
    source: ImageSource,
    *,
    decoder: Decoder,
    cfg: PreprocessConfig,
    device: torch.device,
    max_pixels: int | None,
    max_bytes: int | None,
    threads: int = 1,
    normalize_inputs: bool = False,
    phash: bool = False,
) -> PreparedChunk:
    """Fetch, decode, resize and crop one chunk of rows.

    Parameters
    ----------
    rows
        The chunk's rows, as ``source.rows`` gives them.
    start
        Partition position of ``rows[0]``.
    source, decoder
        What the rows are, and how encoded ones are decoded.
    cfg
        The model's preprocessing.
    device
        Where crops are made and kept (the model's device).
    max_pixels, max_bytes
        Decompression-bomb limit, and the decoded bytes one image (or one nvJPEG call) may take.
    threads
        Decode threads (each holds at most one full-size image); 1 on GPUs.
    normalize_inputs
        Normalise the crops here (on a GPU: on the decode stream) instead of in the model stage.
    phash
        Also compute each image's pHash from the same decoded pixels (``PreparedChunk.hashes``).

    Returns
    -------
    PreparedChunk
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    fetched = source.fetch(rows, max_pixels=max_pixels)
    seconds["fetch"] = time.perf_counter() - started
    errors = [(start + i, reason or "unknown") for i, (payload, reason) in enumerate(fetched) if payload is None]
    payloads = [payload for payload, _ in fetched]
    todo = [i for i, payload in enumerate(payloads) if payload is not None]
    shares = [todo[k::threads] for k in range(threads)] if threads > 1 and len(todo) > 1 else [todo]
    kwargs = dict(
        encoded=source.encoded,
        decoder=decoder,
        cfg=cfg,
        device=device,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        phash=phash,
    )
    if len(shares) == 1:
        results = [_crop_share(payloads, shares[0], **kwargs)]  # type: ignore[arg-type]
    else:
        with ThreadPoolExecutor(len(shares), thread_name_prefix="dask-clip-decode") as pool:
            results = list(pool.map(lambda share: _crop_share(payloads, share, **kwargs), shares))  # type: ignore[arg-type]
    crops = sorted((c for share_crops, _, _, _ in results for c in share_crops), key=lambda c: c[0])
    errors += [(start + i, reason) for _, share_errors, _, _ in results for i, reason in share_errors]
    hashes = sorted((start + i, h) for _, _, _, share_hashes in results for i, h in share_hashes)
    seconds["decode+resize cpu"] = sum(s for _, _, s, _ in results)  # CPU time of the decode threads
    seconds["decode+resize"] = time.perf_counter() - started - seconds["fetch"]
    inputs = torch.stack([crop for _, crop in crops]) if crops else None
    if inputs is not None and normalize_inputs:
        inputs = normalize(inputs, cfg)
    event = None
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
    return PreparedChunk(
        start=start,
        positions=np.array([start + i for i, _ in crops], dtype=np.int64),
        inputs=inputs,
        normalized=normalize_inputs and inputs is not None,
        errors=sorted(errors),
        event=event,
        seconds=seconds,
        hashes=hashes,
    )
