"""Image sources: what an image column holds, as a registry of small objects.

Each kind of image column — encoded bytes, paths/URLs, decoded pixels — is one
:class:`ImageSource` that knows which column types it matches, how to turn a partition into one
Python object per row (through :mod:`dask_clip.backends`, so pandas and cuDF share it), how its
rows are decoded, and whether a kept image column is rewritten in the output. Adding a kind is
one subclass plus :func:`register_source`; the embedder, the CLI's ``--image-kind`` choices and
the detection of ``image_kind="auto"`` pick it up from the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from .. import backends
from ..backends.arrow import is_binary_type, is_string_type, is_uint8_list_type, split_flat_pixels
from ..io.fetch import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_PROTOCOLS, DEFAULT_READ_TIMEOUT
from .decode import Decoder, DecodeResult, check_pixels, read_paths

__all__ = [
    "SOURCES",
    "BytesSource",
    "ImageSource",
    "PathSource",
    "PixelSource",
    "ReadLimits",
    "detect_source",
    "get_source",
    "image_kinds",
    "register_source",
    "source_for_type",
]


@dataclass(frozen=True)
class ReadLimits:
    """What reading one row's image may cost (``ImageEmbedder``'s knobs of the same names).

    Attributes
    ----------
    max_image_bytes : int or None
        Largest encoded image, in bytes; None: no cap.
    allowed_protocols : tuple of str
        Protocols a path column may name (:data:`dask_clip.io.fetch.DEFAULT_PROTOCOLS`).
    read_timeout : float or None
        Seconds one remote read may take; None: no limit.
    """

    max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES
    allowed_protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    read_timeout: float | None = DEFAULT_READ_TIMEOUT


def _too_large(size: int, limit: int) -> str:
    return f"encoded image too large: {size} bytes > max_image_bytes {limit}"


def _nbytes(row: object) -> int:
    """Bytes of an encoded row (0 for anything the decoder will refuse anyway)."""
    if isinstance(row, memoryview):
        return row.nbytes
    return len(row) if isinstance(row, (bytes, bytearray)) else 0


class ImageSource(ABC):
    """One kind of image column. Instances are shared and picklable; the registered ones hold
    default :class:`ReadLimits`, and :meth:`bounded` gives one with an embedder's limits.

    Attributes
    ----------
    kind : str
        The name users pass as ``image_kind`` (``"bytes"``, ``"path"``, ``"pixels"``, ...).
    encoded : bool
        Whether :meth:`fetch` gives encoded images (bytes the decoder turns into pixels) or
        pixels already.
    """

    kind: ClassVar[str]
    encoded: ClassVar[bool] = True
    limits: ReadLimits = ReadLimits()

    def bounded(self, limits: ReadLimits) -> ImageSource:
        """This source reading within ``limits`` (a copy; the registered instance is unchanged)."""
        if limits == self.limits:
            return self
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.limits = limits
        return copy

    @abstractmethod
    def matches_type(self, arrow_type: pa.DataType) -> bool:
        """Whether a column storing ``arrow_type`` holds this kind."""

    @abstractmethod
    def matches_value(self, value: object) -> bool:
        """Whether one non-null value (of an object column) is of this kind."""

    @abstractmethod
    def rows(self, df: Any, column: str, *, height_column: str, width_column: str) -> list[object]:
        """One Python object per row of ``df[column]`` (None for nulls), in order."""

    def fetch(self, rows: Sequence[object], *, max_pixels: int | None = None) -> list[tuple[Any, str | None]]:
        """Each row's payload — encoded bytes, or pixels when not :attr:`encoded` — or None and a
        reason; never raises for a row. Default: the rows themselves, None rows missing, encoded
        rows longer than ``limits.max_image_bytes`` refused."""
        cap = self.limits.max_image_bytes if self.encoded else None
        out: list[tuple[Any, str | None]] = []
        for row in rows:
            if row is None:
                out.append((None, "missing image (null)"))
            elif cap is not None and _nbytes(row) > cap:
                out.append((None, _too_large(_nbytes(row), cap)))
            else:
                out.append((row, None))
        return out

    def decode(self, rows: Sequence[object], decoder: Decoder, *, max_pixels: int | None) -> list[DecodeResult]:
        """Each row as uint8 (H, W, 3) pixels, or None and a reason; never raises for a row."""
        fetched = self.fetch(rows, max_pixels=max_pixels)
        if not self.encoded:
            return fetched
        decoded = decoder.decode([payload for payload, _ in fetched], max_pixels=max_pixels)
        # a row that could not be fetched keeps the fetch's reason
        return [(None, reason) if payload is None else result for (payload, reason), result in zip(fetched, decoded)]

    def keep(self, series: Any) -> Any:
        """The image column as it goes into the output when kept (default: unchanged)."""
        return series


class BytesSource(ImageSource):
    """Encoded images (JPEG, PNG, WebP, GIF, BMP, TIFF, ...): Arrow binary or object bytes."""

    kind = "bytes"

    def matches_type(self, arrow_type: pa.DataType) -> bool:
        return is_binary_type(arrow_type)

    def matches_value(self, value: object) -> bool:
        return isinstance(value, (bytes, bytearray, memoryview))

    def rows(self, df: Any, column: str, *, height_column: str, width_column: str) -> list[object]:
        return backends.byte_rows(df[column])

    def keep(self, series: Any) -> Any:
        # Dask cannot write an object column of bytes to Parquet; Arrow binary it can.
        return backends.as_binary(series)


class PathSource(ImageSource):
    """Local paths or fsspec URLs (strings), read within :attr:`limits` (only allowed protocols,
    only regular local files, a byte cap, a timeout: :mod:`dask_clip.io.fetch`), then decoded like
    bytes."""

    kind = "path"

    def matches_type(self, arrow_type: pa.DataType) -> bool:
        return is_string_type(arrow_type)

    def matches_value(self, value: object) -> bool:
        return isinstance(value, str)

    def rows(self, df: Any, column: str, *, height_column: str, width_column: str) -> list[object]:
        return backends.string_rows(df[column])

    def fetch(self, rows: Sequence[object], *, max_pixels: int | None = None) -> list[tuple[Any, str | None]]:
        limits = self.limits
        return read_paths(
            rows,
            max_bytes=limits.max_image_bytes,
            allowed_protocols=limits.allowed_protocols,
            timeout=limits.read_timeout,
        )


class PixelSource(ImageSource):
    """Decoded uint8 (H, W, 3) pixels: arrays in an object column, or a flat Arrow ``list<uint8>``
    with height and width columns (viewed through DLPack, no copy)."""

    kind = "pixels"
    encoded = False

    def matches_type(self, arrow_type: pa.DataType) -> bool:
        return is_uint8_list_type(arrow_type)

    def matches_value(self, value: object) -> bool:
        return hasattr(value, "shape") and hasattr(value, "dtype")

    def rows(self, df: Any, column: str, *, height_column: str, width_column: str) -> list[object]:
        series = df[column]
        arrow_type = backends.column_type(series)
        if arrow_type is None:  # an object column of arrays
            return backends.object_rows(series)
        missing = [c for c in (height_column, width_column) if c not in df.columns]
        if missing:
            raise ValueError(f"a list<uint8> pixel column needs height/width columns; missing {missing}")
        flat, offsets, valid = backends.flat_uint8_rows(series)
        heights, widths = backends.host_floats(df[height_column]), backends.host_floats(df[width_column])
        return split_flat_pixels(flat, offsets, valid, heights, widths)  # type: ignore[return-value]

    def fetch(self, rows: Sequence[object], *, max_pixels: int | None = None) -> list[tuple[Any, str | None]]:
        return [check_pixels(p, max_pixels=max_pixels) for p in rows]


#: The registry, in detection order.
SOURCES: dict[str, ImageSource] = {}


def register_source(source: ImageSource) -> ImageSource:
    """Add (or replace) an image kind; returns it."""
    SOURCES[source.kind] = source
    return source


for _source in (BytesSource(), PathSource(), PixelSource()):
    register_source(_source)


def image_kinds() -> tuple[str, ...]:
    """The values ``image_kind`` accepts: ``"auto"`` and every registered kind."""
    return ("auto", *SOURCES)


def get_source(kind: str) -> ImageSource:
    """The registered source of ``kind``.

    Raises
    ------
    ValueError
        Unknown kind (the message lists the registered ones).
    """
    try:
        return SOURCES[kind]
    except KeyError:
        raise ValueError(f"image_kind={kind!r}; choose one of {image_kinds()}") from None


def source_for_type(arrow_type: pa.DataType | None) -> ImageSource | None:
    """The source whose column type is ``arrow_type`` (``binary``: bytes, ``string``: paths,
    ``list<uint8>``: pixels), or None (None given, or a type that holds no images)."""
    if arrow_type is None:
        return None
    return next((source for source in SOURCES.values() if source.matches_type(arrow_type)), None)


def detect_source(series: Any) -> ImageSource | None:
    """The source an image column's type (or, for object columns, first value) says it holds.

    Parameters
    ----------
    series
        The image column (pandas or cuDF, possibly empty).

    Returns
    -------
    ImageSource or None
        None when the type does not say and the column has no non-null value to look at.

    Raises
    ------
    TypeError
        The column's type or values cannot hold images.
    """
    arrow_type = backends.column_type(series)
    ambiguous = arrow_type is not None and pa.types.is_string(arrow_type) and backends.binary_as_string(series)
    if arrow_type is not None and not ambiguous:
        for source in SOURCES.values():
            if source.matches_type(arrow_type):
                return source
        raise TypeError(f"image column of dtype {series.dtype} holds no images; expected binary, string or list<uint8>")
    values = backends.sample_values(series, 1)
    if not values:
        return None
    for source in SOURCES.values():
        if source.matches_value(values[0]):
            return source
    raise TypeError(f"image column holds {type(values[0]).__name__}; expected bytes, str paths or uint8 arrays")
