"""Batched JPEG decode with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``).

Same contract as :class:`dask_clip.decode.PillowDecoder`: one ``(pixels, reason)`` per row, in
order, never raising for a bad row. Only what nvJPEG decodes like Pillow goes to the GPU:

- baseline or progressive JPEG (Pillow says ``format == "JPEG"``) in mode ``RGB`` or ``L``
  (not Adobe RGB-coded), ending with the EOI marker (a truncated file goes to Pillow, which reports it as the CPU
  path does), with at most ``max_pixels`` pixels (read from the header without decoding);
- everything else (PNG, WebP, CMYK/YCCK JPEG, MPO, oversized, undecodable) takes the CPU path,
  :func:`dask_clip.decode.decode_bytes`, and so gets the same pixels or the same error.

A batch that nvJPEG rejects (one bad image fails the whole call) is retried image by image;
an image that still fails falls back to Pillow. EXIF orientation is not applied (Pillow does
not transpose either). nvJPEG's chroma upsampling differs slightly from libjpeg's "fancy"
upsampling and torchvision exposes no switch for it, so GPU-decoded pixels differ by a few
levels near colour edges: ``benchmarks/gpu_check.py`` reports the resulting parity figure.

All functions also run with ``device="cpu"`` (torchvision's libjpeg decoder), which is how
the routing, fallback and row alignment are tested without a GPU.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence

import torch
from PIL import Image

from .decode import DEFAULT_MAX_IMAGE_PIXELS, DecodeResult, decode_bytes

__all__ = ["GPU_DECODE_MODES", "NvjpegDecoder", "decode_jpegs", "jpeg_on_device"]

logger = logging.getLogger(__name__)

#: Pillow modes of JPEGs that nvJPEG's RGB output matches (CMYK/YCCK go to Pillow).
GPU_DECODE_MODES = ("RGB", "L")
# Images per nvJPEG call: bounds the decoder's own scratch memory; a chunk is decoded in
# several calls of this size.
_DECODE_BATCH = 128
_EOI = b"\xff\xd9"


def jpeg_on_device(data: object, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Whether nvJPEG should decode these bytes (else Pillow does, as on the CPU path).

    Reads only the JPEG header (Pillow's lazy ``Image.open``), so it is cheap and refuses
    decompression bombs before anything is decoded.

    Parameters
    ----------
    data
        One row's encoded bytes (``bytes``/``bytearray``/``memoryview``), or anything else.
    max_pixels
        Images with more pixels stay on the CPU path, which refuses them with its message.

    Returns
    -------
    bool
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 4:
        return False
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8" or bytes(view[-2:]) != _EOI:
        return False  # not a JPEG, or truncated / trailing data: Pillow decides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # header only; no pixel is decoded
                width, height = image.size
                # Adobe transform 0: RGB-coded components, which only libjpeg is sure to honour.
                ok = (
                    image.format == "JPEG" and image.mode in GPU_DECODE_MODES and image.info.get("adobe_transform") != 0
                )
    except Exception:
        return False
    return ok and (max_pixels is None or width * height <= max_pixels)


def _byte_tensor(data: bytes | bytearray | memoryview) -> torch.Tensor:
    # decode_jpeg wants a CPU uint8 tensor; a bytearray copy is writable (torch warns on
    # read-only buffers) and costs microseconds next to the decode.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_list(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: "use TorchCodec"
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)
    return list(out)


def decode_jpegs(
    blobs: Sequence[bytes | bytearray | memoryview], device: torch.device | str
) -> list[torch.Tensor | None]:
    """Decode JPEGs in one batched call; on failure, retry one by one.

    Parameters
    ----------
    blobs
        Encoded JPEGs (already routed by :func:`jpeg_on_device`).
    device
        ``cuda[:N]`` for nvJPEG, or ``cpu`` (libjpeg; used by the tests).

    Returns
    -------
    list of torch.Tensor or None
        uint8 (H, W, 3) RGB on ``device`` (a view of the decoder's (3, H, W) output), or None
        where the image failed on its own: the caller falls back to Pillow.
    """
    device = torch.device(device)
    tensors = [_byte_tensor(b) for b in blobs]
    if not tensors:
        return []
    try:
        decoded: list[torch.Tensor | None] = list(_decode_list(tensors, device))
    except Exception as err:
        if len(tensors) == 1:
            return [None]
        logger.debug("dask_clip: batched JPEG decode failed (%s); retrying per image", err)
        decoded = []
        for tensor in tensors:
            try:
                decoded.extend(_decode_list([tensor], device))
            except Exception:
                decoded.append(None)
    return [None if t is None else t.permute(1, 2, 0) for t in decoded]


def _decode_routed(rows: Sequence[object], device: torch.device, max_pixels: int | None) -> list[DecodeResult]:
    results: list[DecodeResult | None] = [None] * len(rows)
    on_device = [i for i, data in enumerate(rows) if jpeg_on_device(data, max_pixels=max_pixels)]
    for start in range(0, len(on_device), _DECODE_BATCH):
        members = on_device[start : start + _DECODE_BATCH]
        for i, pixels in zip(members, decode_jpegs([rows[i] for i in members], device)):  # type: ignore[misc]
            if pixels is not None:
                results[i] = (pixels, None)
    # The CPU path for everything else and for what nvJPEG refused: same pixels, same errors.
    return [r if r is not None else decode_bytes(rows[i], max_pixels=max_pixels) for i, r in enumerate(results)]


class NvjpegDecoder:
    """A :class:`~dask_clip.decode.Decoder`: JPEGs on ``device`` (nvJPEG on CUDA), the rest with Pillow.

    On CUDA the decode runs on a side stream that is synchronised before returning (the
    caller's thread, decoding ahead of the model, blocks; the model's stream does not), and
    each output is marked as used by the device's default stream, where the model runs.

    Parameters
    ----------
    device
        Where JPEGs are decoded: ``cuda[:N]``, or ``cpu`` (torchvision's libjpeg, which is how
        the routing, fallback and row alignment are tested without a GPU).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def decode(self, blobs: Sequence[object], *, max_pixels: int | None) -> list[DecodeResult]:
        """One ``(pixels, reason)`` per blob, in order: uint8 (H, W, 3) torch tensors on
        ``device`` for JPEGs nvJPEG decoded, NumPy arrays for the Pillow fallbacks."""
        if self.device.type != "cuda":
            return _decode_routed(blobs, self.device, max_pixels)
        stream = torch.cuda.Stream(self.device)
        consumer = torch.cuda.default_stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            results = _decode_routed(blobs, self.device, max_pixels)
        stream.synchronize()
        for pixels, _ in results:
            if isinstance(pixels, torch.Tensor) and pixels.is_cuda:
                pixels.record_stream(consumer)  # allocated on `stream`, freed after `consumer` uses it
        return results
