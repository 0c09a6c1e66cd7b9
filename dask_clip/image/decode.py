"""Turn one row's image — encoded bytes, a path/URL, or decoded pixels — into uint8 (H, W, 3) RGB.

Decoding follows open_clip's reference: Pillow opens the image and ``convert("RGB")`` maps
every mode (L, P, RGBA, CMYK, I;16, ...) to RGB. Failures never raise here: each function
returns the pixels or a short reason that goes into the error column.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io.fetch import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_PROTOCOLS, DEFAULT_READ_TIMEOUT

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DecodeResult", "check_pixels", "decode_bytes", "read_paths"]

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS); 20-megapixel photos pass.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Decoded bytes (RGB) one image may take (``ImageEmbedder(max_decode_bytes=...)``): an image
#: of Pillow's pixel limit fits; a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
#: to fit, anything else larger is a row error.
DEFAULT_DECODE_BUDGET = 256 * 2**20
_DCT_SCALES = (2, 4, 8)

DecodeResult = tuple[Any, "str | None"]
"""(uint8 (H, W, 3) RGB pixels — a NumPy array or torch tensor — and None) on success,
(None, reason) on failure."""

_WARNINGS_SET = threading.Event()
_WARNINGS_LOCK = threading.Lock()


# Pillow lays an image out in blocks of this many bytes; an image within one block can be
# viewed without a copy (Arrow C data interface). Sized to hold an image of Pillow's pixel limit.
_PILLOW_BLOCK_SIZE = 1 << 30


def _configure_pillow() -> None:
    """Process-wide Pillow settings, applied once (thread-safe):

    - DecompressionBombWarning silenced: we apply our own limit. ``warnings.catch_warnings()``
      swaps the process-wide filter list and is not thread-safe, so decode threads must not
      enter it; one global filter, set once, is.
    - Image memory in blocks large enough for a whole image (allocated to size, not to the
      block), so its pixels are handed to NumPy/torch without the copies ``np.asarray`` makes.
    """
    if _WARNINGS_SET.is_set():
        return
    with _WARNINGS_LOCK:
        if not _WARNINGS_SET.is_set():
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            if Image.core.get_block_size() < _PILLOW_BLOCK_SIZE:
                Image.core.set_block_size(_PILLOW_BLOCK_SIZE)
            _WARNINGS_SET.set()


def _pixels(rgb: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an RGB image: a view of Pillow's memory where it is one block
    (Pillow stores RGB as 4 bytes a pixel), else a copy."""
    width, height = rgb.size
    try:
        import pyarrow as pa

        flat = pa.array(rgb)  # Arrow C data interface: no copy
        while pa.types.is_nested(flat.type):
            flat = flat.flatten()
        values = np.frombuffer(flat.buffers()[1], np.uint8, len(flat), flat.offset)
        return values.reshape(height, width, -1)[:, :, :3]
    except Exception:  # rows in several blocks, an old Pillow: the copying way
        return np.asarray(rgb)


def _allow_pillow_limit(max_pixels: int | None) -> None:
    """Raise Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``, an error it raises before we
    can look) to at least ``max_pixels``, so the user's limit is the one that applies."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (max_pixels is not None and 2 * limit >= max_pixels):
        return
    with _WARNINGS_LOCK:
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(limit or 0, -(-max_pixels // 2))


def _fit_budget(image: Image.Image, max_bytes: int | None) -> str | None:
    """Make ``image`` decode within ``max_bytes`` of RGB: DCT scaling for a JPEG, else a reason."""
    width, height = image.size
    if max_bytes is None or width * height * 3 <= max_bytes:
        return None
    if image.format == "JPEG":
        for scale in _DCT_SCALES:
            size = (-(-width // scale), -(-height // scale))
            if size[0] * size[1] * 3 <= max_bytes:
                image.draft("RGB", size)  # decodes at 1/scale in the DCT: never at full size
                return None
    need = width * height * 3 / 2**20
    return (
        f"image too large to decode: {width}x{height} needs {need:.0f} MiB, more than the decode budget of "
        f"{max_bytes / 2**20:.0f} MiB (max_decode_bytes)"
    )


def decode_bytes(
    data: object, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, max_bytes: int | None = None
) -> DecodeResult:
    """Decode encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, ...) with Pillow.

    Parameters
    ----------
    data
        ``bytes``, ``bytearray`` or ``memoryview``; anything else (None, NaN, str) is a row error.
    max_pixels
        Refuse images with more pixels than this before decoding them (decompression bombs);
        None disables the check.
    max_bytes
        Decoded RGB bytes the image may take: a larger JPEG is decoded at a reduced DCT scale
        (1/2, 1/4 or 1/8) that fits, anything else larger is refused; None: no budget.

    Returns
    -------
    pixels : numpy.ndarray of uint8, shape (H, W, 3), or None
    reason : str or None
    """
    if data is None or (isinstance(data, float) and np.isnan(data)):
        return None, "missing image (null)"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, f"expected image bytes, got {type(data).__name__}"
    if len(data) == 0:
        return None, "empty image bytes"
    _configure_pillow()
    _allow_pillow_limit(max_pixels)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            return None, f"image too large: {width}x{height} pixels > limit {max_pixels} (decompression bomb?)"
        too_large = _fit_budget(image, max_bytes)
        if too_large:
            return None, too_large
        if image.mode == "RGB":
            image.load()  # convert("RGB") would decode, then copy: twice the memory at the peak
            return _pixels(image), None
        rgb = image.convert("RGB")  # decodes; first frame of animations
        del image  # the decoded source mode is freed now
        return _pixels(rgb), None
    except Image.DecompressionBombError as err:
        return None, f"image too large (decompression bomb?): {err}"
    except UnidentifiedImageError:
        return None, "not a decodable image (unknown format)"
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # Pillow reports truncated and corrupt files as OSError/SyntaxError/EOFError.
        return None, f"corrupt or truncated image: {err}"
    except Exception as err:  # a plugin bug must not kill the partition
        return None, f"decode failed: {type(err).__name__}: {err}"


def read_paths(
    paths: Sequence[object],
    *,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
    allowed_protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> list[tuple[bytes | None, str | None]]:
    """Read local paths or fsspec URLs, bounded (:mod:`dask_clip.io.fetch`): only allowed protocols,
    only regular local files, at most ``max_bytes`` per image, remote reads within ``timeout``.

    Parameters
    ----------
    paths
        One entry per row: a path or URL string (``s3://``, ``file://``, ...) or None.
    max_bytes
        Largest encoded image read, in bytes (default 64 MiB); None: no cap. A larger file is a
        row error, found before it is read where its size is known.
    allowed_protocols
        Protocols that may be opened (default :data:`~dask_clip.io.fetch.DEFAULT_PROTOCOLS`: local
        files and object stores; ``http``/``https`` are opt-in).
    timeout
        Seconds one remote read may take (default 60); None: no limit.

    Returns
    -------
    list of (bytes or None, reason or None)
        In the order of ``paths``; never raises for a row.
    """
    from fsspec.implementations.local import LocalFileSystem

    from ..io.fetch import LOCAL_PROTOCOLS, read_local, read_urls, url_protocols

    allowed = {p.lower() for p in allowed_protocols}
    results: list[tuple[bytes | None, str | None]] = [(None, "missing path (null)")] * len(paths)
    remote: list[int] = []
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path:
            continue
        protocols = url_protocols(path)
        refused = [p for p in protocols if p not in allowed]
        if refused:
            results[i] = (
                None,
                f"protocol {refused[0]!r} not allowed: {path} (allowed_protocols: {', '.join(sorted(allowed))})",
            )
        elif len(protocols) == 1 and protocols[0] in LOCAL_PROTOCOLS:
            results[i] = read_local(LocalFileSystem._strip_protocol(path), max_bytes, shown=path)
        else:
            remote.append(i)
    if remote:
        fetched = read_urls([paths[i] for i in remote], max_bytes=max_bytes, timeout=timeout)  # type: ignore[misc]
        for i, got in zip(remote, fetched):
            results[i] = got
    return results


def check_pixels(pixels: Any, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> DecodeResult:
    """Validate one decoded image: uint8 (H, W, 3) RGB; (H, W) and (H, W, 1) gray and
    (H, W, 4) RGBA are mapped to RGB as Pillow's ``convert("RGB")`` would (alpha dropped).

    Parameters
    ----------
    pixels
        An array-like (NumPy array, torch tensor, anything with ``__dlpack__``) or None.

    Returns
    -------
    pixels : numpy.ndarray or torch.Tensor of uint8, shape (H, W, 3), or None
        A view where possible (no copy for RGB input).
    reason : str or None
    """
    if pixels is None:
        return None, "missing image (null)"
    if not hasattr(pixels, "shape") or not hasattr(pixels, "dtype"):
        return None, f"expected a uint8 (H, W, 3) array, got {type(pixels).__name__}"
    shape = tuple(pixels.shape)
    if str(pixels.dtype) not in ("uint8", "torch.uint8"):
        return None, f"expected uint8 pixels, got dtype {pixels.dtype}"
    if len(shape) == 2:
        pixels, shape = pixels[:, :, None], (*shape, 1)
    if len(shape) != 3 or shape[2] not in (1, 3, 4) or shape[0] == 0 or shape[1] == 0:
        return None, f"expected (H, W, 3) pixels, got shape {shape}"
    if max_pixels is not None and shape[0] * shape[1] > max_pixels:
        return None, f"image too large: {shape[1]}x{shape[0]} pixels > limit {max_pixels}"
    if shape[2] == 1:
        return _repeat_gray(pixels), None
    if shape[2] == 4:
        return pixels[:, :, :3], None
    return pixels, None


def _repeat_gray(pixels: Any) -> Any:
    if isinstance(pixels, np.ndarray):
        return np.repeat(pixels, 3, axis=2)
    return pixels.expand(-1, -1, 3)  # torch: a view


class Decoder(Protocol):
    """Turns encoded images into pixels: Pillow (:class:`PillowDecoder`), or nvJPEG with a Pillow
    fallback (:class:`dask_clip.image.gpu_decode.NvjpegDecoder`)."""

    def decode_groups(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> Iterator[list[tuple[int, DecodeResult]]]:
        """``(index, (pixels, reason))`` for every blob, a group at a time: the caller can use
        and drop a group's pixels before the next group is decoded. Never raises for a blob."""
        ...

    def decode(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> list[DecodeResult]:
        """One ``(pixels, reason)`` per blob, in order."""
        ...


class BaseDecoder:
    """:meth:`decode` from :meth:`decode_groups`."""

    def decode_groups(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> Iterator[list[tuple[int, DecodeResult]]]:
        raise NotImplementedError

    def decode(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> list[DecodeResult]:
        """One ``(pixels, reason)`` per blob, in order (every blob's pixels held at once)."""
        results: list[DecodeResult] = [(None, "not decoded")] * len(blobs)
        for group in self.decode_groups(blobs, max_pixels=max_pixels, max_bytes=max_bytes):
            for index, result in group:
                results[index] = result
        return results


class PillowDecoder(BaseDecoder):
    """The reference decoder: Pillow, ``convert("RGB")`` (what open_clip's pipeline does), one
    image at a time."""

    def decode_groups(
        self, blobs: Sequence[object], *, max_pixels: int | None, max_bytes: int | None = None
    ) -> Iterator[list[tuple[int, DecodeResult]]]:
        """:func:`decode_bytes` for each blob; uint8 (H, W, 3) NumPy pixels, one per group."""
        for index, blob in enumerate(blobs):
            yield [(index, decode_bytes(blob, max_pixels=max_pixels, max_bytes=max_bytes))]


#: The shared Pillow decoder.
PILLOW = PillowDecoder()
