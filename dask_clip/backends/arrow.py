"""Arrow and NumPy buffer helpers shared by both backends: zero-copy row views and flat columns.

Arrow (pandas' ``ArrowDtype`` columns) and cuDF lay out strings, binaries and lists the same
way: a validity bitmask, an offsets buffer and one values buffer. Everything here works on
those buffers, on the host (cuDF hands its buffers over with one device→host copy, or keeps
list leaves on the device as torch tensors through DLPack), so it is tested on CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

__all__ = [
    "MASK_PADDING",
    "byte_rows",
    "dense_matrix",
    "dense_rows",
    "flat_list_buffers",
    "is_binary_type",
    "is_string_type",
    "is_uint8_list_type",
    "list_float32_array",
    "list_offsets",
    "looks_like_image",
    "pack_validity",
    "rows_from_buffers",
    "split_flat_pixels",
]

# libcudf pads null masks to 64 bytes (cudf::bitmask_allocation_size_bytes).
MASK_PADDING = 64
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)


def is_binary_type(t: pa.DataType) -> bool:
    """``binary``, ``large_binary`` or ``binary_view``."""
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def is_string_type(t: pa.DataType) -> bool:
    """``string``, ``large_string`` or ``string_view``."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_uint8_list_type(t: pa.DataType) -> bool:
    """``list<uint8>`` or ``large_list<uint8>``: flat decoded pixels."""
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_uint8(t.value_type)


def rows_from_buffers(
    offsets: np.ndarray, data: memoryview | bytes | np.ndarray, valid: np.ndarray | None = None
) -> list[memoryview | None]:
    """Per-row byte views into one buffer, Arrow/cuDF string layout.

    Parameters
    ----------
    offsets
        int32 or int64 (N + 1,): row i is ``data[offsets[i]:offsets[i + 1]]``.
    data
        The chars buffer (host memory).
    valid
        bool (N,), False for null rows; None when there are no nulls.

    Returns
    -------
    list of memoryview or None
        N zero-copy views (None for nulls).
    """
    view = memoryview(data).cast("B")  # type: ignore[arg-type]  # ndarray has the buffer protocol
    bounds = np.asarray(offsets, dtype=np.int64).tolist()  # Python ints: fast slicing
    if valid is None:
        return [view[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    flags = np.asarray(valid, dtype=bool).tolist()
    return [view[bounds[i] : bounds[i + 1]] if flags[i] else None for i in range(len(bounds) - 1)]


def byte_rows(array: pa.Array | pa.ChunkedArray) -> list[memoryview | None]:
    """Zero-copy per-row views of an Arrow binary or string array.

    Parameters
    ----------
    array
        ``binary``, ``large_binary``, ``string`` or ``large_string`` (view types are cast first,
        one copy); sliced and chunked arrays are handled.

    Returns
    -------
    list of memoryview or None
        One per row; None for nulls.
    """
    if isinstance(array, pa.ChunkedArray):
        return [row for chunk in array.chunks for row in byte_rows(chunk)]
    if pa.types.is_binary_view(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.binary())
    large = pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type)
    width = np.int64 if large else np.int32
    validity, offsets_buf, data_buf = array.buffers()[:3]
    offsets = np.frombuffer(
        offsets_buf, dtype=width, count=len(array) + 1, offset=array.offset * np.dtype(width).itemsize
    )
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    valid = None if validity is None or array.null_count == 0 else array.is_valid().to_numpy(zero_copy_only=False)
    return rows_from_buffers(offsets, data, valid)


def looks_like_image(head: bytes | memoryview | None) -> bool:
    """Whether a value starts like an encoded image (or is not UTF-8 text, so not a path).

    Parameters
    ----------
    head
        The first bytes of one value.
    """
    if head is None:
        return False
    head = bytes(head[:16])
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp":
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(head) - 3  # a cut multi-byte character at the end is still text
    return False


def flat_list_buffers(array: pa.Array | pa.ChunkedArray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The values of an Arrow ``list<uint8>`` array as one flat tensor view, plus row bounds.

    Parameters
    ----------
    array
        ``list<uint8>`` or ``large_list<uint8>``; a single-chunk array is viewed as it is
        (combining chunks copies).

    Returns
    -------
    flat : torch.Tensor
        uint8 (total,), a view of the values buffer (no copy).
    offsets : numpy.ndarray
        int64 (N + 1,): row i is ``flat[offsets[i]:offsets[i + 1]]``.
    valid : numpy.ndarray
        bool (N,), False for null rows.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    values = array.values  # already offset-adjusted for sliced arrays' children
    # DLPack, not from_numpy: the Arrow buffer is read-only and DLPack says so without a warning
    import torch  # here: the column-type helpers above serve light imports (the CLI's --help)

    flat = torch.from_dlpack(np.frombuffer(values.buffers()[1], np.uint8, len(values), values.offset))
    offsets = array.offsets.to_numpy().astype(np.int64) - array.offsets[0].as_py()
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return flat, offsets, valid


def split_flat_pixels(
    flat: torch.Tensor, offsets: np.ndarray, valid: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> list[torch.Tensor | None]:
    """Per-row (H, W, C) views of one flat pixel buffer (shared by the pandas and cuDF paths).

    Parameters
    ----------
    flat
        uint8 (total,) on any device (a DLPack view of an Arrow or cuDF buffer).
    offsets
        int (N + 1,): row i is ``flat[offsets[i]:offsets[i + 1]]``.
    valid
        bool (N,), False for null rows.
    heights, widths
        float (N,), NaN where unknown.

    Returns
    -------
    list of torch.Tensor or None
        Views, no copy; a row whose length does not fit its shape stays flat (so
        :func:`dask_clip.image.decode.check_pixels` reports it).
    """
    rows: list[torch.Tensor | None] = []
    for i in range(len(valid)):
        start, stop = int(offsets[i]), int(offsets[i + 1])
        h, w = heights[i], widths[i]
        if not valid[i]:
            rows.append(None)
        elif np.isnan(h) or np.isnan(w) or int(h) * int(w) == 0 or (stop - start) % (int(h) * int(w)):
            rows.append(flat[start:stop])  # flat: check_pixels says why
        else:
            rows.append(flat[start:stop].view(int(h), int(w), -1))
    return rows


def list_offsets(valid: np.ndarray, dim: int) -> np.ndarray:
    """Offsets of a list column whose valid rows hold ``dim`` values and null rows none.

    Null rows are *empty* nulls: libcudf's list operations (``.list.leaves`` among them) read
    the values under a null row's offsets as if they were data, so a null row must span none.

    Parameters
    ----------
    valid
        bool (N,).
    dim
        Values per valid row.

    Returns
    -------
    numpy.ndarray
        int32 (N + 1,): row i spans ``offsets[i]:offsets[i + 1]`` of the values.
    """
    valid = np.asarray(valid, dtype=bool)
    if int(valid.sum()) * dim >= 2**31:
        raise ValueError("partition too large for int32 list offsets; use smaller partitions")
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid.astype(np.int32) * dim, out=offsets[1:])
    return offsets


def list_float32_array(values: np.ndarray, valid: np.ndarray) -> pa.ListArray:
    """A ``list<float32>`` Arrow array from one flat buffer: no Python list of arrays.

    Parameters
    ----------
    values
        float32 (M, D) (or (M,) for one value per row), the rows that have values, in order.
    valid
        bool (N,), True where a row has values; ``valid.sum() == M``.

    Returns
    -------
    pyarrow.ListArray
        Length N, null where ``valid`` is False.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values.reshape(-1, 1)
    n_valid, dim = values.shape if values.ndim == 2 else (0, 0)
    if n_valid != int(valid.sum()):
        raise ValueError(f"{n_valid} embeddings for {int(valid.sum())} valid rows")
    if n_valid * dim >= 2**31:
        raise ValueError("partition too large for int32 list offsets; use smaller partitions")
    offsets = list_offsets(valid, dim)
    mask = pa.array(~valid) if not valid.all() else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)), mask=mask)


def pack_validity(valid: np.ndarray) -> np.ndarray:
    """A validity bitmask as Arrow and libcudf lay it out: bit i (LSB first) set for valid rows.

    Parameters
    ----------
    valid
        bool (N,).

    Returns
    -------
    numpy.ndarray
        uint8 (ceil(N / 8) rounded up to a multiple of 64,) — libcudf's mask padding.
    """
    bits = np.packbits(np.asarray(valid, dtype=bool), bitorder="little")
    size = max(MASK_PADDING, -(-len(bits) // MASK_PADDING) * MASK_PADDING)
    out = np.zeros(size, dtype=np.uint8)
    out[: len(bits)] = bits
    return out


def dense_rows(embeddings: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
    """The (N, D) tensor with the M embeddings in the valid rows and zeros elsewhere.

    Parameters
    ----------
    embeddings
        float32 (M, D), the successful rows in order, any device.
    valid
        bool (N,) with M True values.

    Returns
    -------
    torch.Tensor
        float32 (N, D), C-contiguous, on ``embeddings``' device; ``embeddings`` itself (no
        copy) when every row is valid.
    """
    valid = np.asarray(valid, dtype=bool)
    if int(valid.sum()) != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings for {int(valid.sum())} valid rows")
    if valid.all():
        return embeddings.contiguous()
    full = embeddings.new_zeros((len(valid), embeddings.shape[1]))
    import torch

    full[torch.from_numpy(valid).to(embeddings.device)] = embeddings
    return full


def dense_matrix(values: object, valid: np.ndarray) -> torch.Tensor:
    """:func:`dense_rows` for any (M, D) array or tensor, also when no row is valid.

    Parameters
    ----------
    values
        float32 (M, D) (or (M,): one value per row) torch tensor or array, M = ``valid.sum()``;
        (0, D) or (0, 0) when every row failed.
    valid
        bool (N,).

    Returns
    -------
    torch.Tensor
        float32 (N, max(D, 1)): every row has at least one value, so a ``list<float32>``
        column built on it has the same length in every row (zeros under the null mask).
    """
    import torch

    emb = torch.as_tensor(values, dtype=torch.float32)
    m = int(np.asarray(valid, dtype=bool).sum())
    width = emb.shape[1] if emb.ndim == 2 else (emb.numel() // m if m else 0)
    emb = emb.reshape(m, width)
    if width == 0:
        emb = emb.new_zeros((m, 1))
    return dense_rows(emb, valid)
