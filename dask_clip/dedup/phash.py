"""Perceptual hashes (pHash, dHash) as ``uint64`` columns, bit-identical to ``imagehash``.

The definitions are the ``imagehash`` package's (4.3), for ``hash_size=8``:

- **pHash**: grayscale (``Image.convert("L")``), Lanczos resize to 32 x 32, 2-D DCT-II
  (``scipy.fftpack.dct`` along rows, then columns), the top-left 8 x 8 coefficients, each bit
  ``coefficient > median`` of those 64;
- **dHash**: grayscale, Lanczos resize to 9 x 8, each bit ``pixel[:, j + 1] > pixel[:, j]``.

Resizing stays Pillow's, one image at a time (the bits depend on its exact rounding); the
DCT, medians, comparisons and bit packing run on the whole batch at once. The 64 bits are
packed most significant first, in ``imagehash``'s order, so ``int(str(imagehash.phash(im)), 16)``
equals the ``uint64`` here and Hamming distances agree.

Images are the RGB pixels the embedder decodes (``uint8 (H, W, 3)``): the hash of a row is
``imagehash``'s hash of ``Image.open(f).convert("RGB")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["HASH_BITS", "HASH_KINDS", "dhash_pixels", "hamming", "hash_pixels", "image_hashes", "phash_pixels"]

HASH_KINDS = ("phash", "dhash")
HASH_BITS = 64
_SIDE = 8  # imagehash's default hash_size
_PHASH_SIZE = 32  # hash_size * highfreq_factor (4)


def _gray(pixels: Any, size: tuple[int, int]) -> np.ndarray:
    """One image as Pillow's ``convert("L").resize(size, LANCZOS)``: uint8 ``(size[1], size[0])``."""
    from PIL import Image

    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
    return np.asarray(image.convert("L").resize(size, Image.Resampling.LANCZOS))


def _pack(bits: np.ndarray) -> np.ndarray:
    """bool ``(n, 8, 8)`` -> uint64 ``(n,)``, first bit most significant (imagehash's hex order)."""
    packed = np.packbits(bits.reshape(len(bits), HASH_BITS), axis=1, bitorder="big")
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def phash_pixels(images: Sequence[Any]) -> np.ndarray:
    """pHash of a batch of images.

    Parameters
    ----------
    images
        uint8 ``(H, W, 3)`` RGB arrays (or ``(H, W)`` gray, or PIL images).

    Returns
    -------
    numpy.ndarray
        uint64 ``(n,)``.
    """
    import scipy.fftpack

    if len(images) == 0:
        return np.empty(0, np.uint64)
    gray = np.stack([_gray(im, (_PHASH_SIZE, _PHASH_SIZE)) for im in images])  # (n, 32, 32) uint8
    dct = scipy.fftpack.dct(scipy.fftpack.dct(gray, axis=1), axis=2)  # per image: axis 0, then 1
    low = dct[:, :_SIDE, :_SIDE]
    med = np.median(low.reshape(len(low), -1), axis=1)
    return _pack(low > med[:, None, None])


def dhash_pixels(images: Sequence[Any]) -> np.ndarray:
    """dHash of a batch of images (as :func:`phash_pixels`): uint64 ``(n,)``."""
    if len(images) == 0:
        return np.empty(0, np.uint64)
    gray = np.stack([_gray(im, (_SIDE + 1, _SIDE)) for im in images])  # (n, 8, 9)
    return _pack(gray[:, :, 1:] > gray[:, :, :-1])


def hash_pixels(images: Sequence[Any], kind: str = "phash") -> np.ndarray:
    """:func:`phash_pixels` or :func:`dhash_pixels` by name: uint64 ``(n,)``."""
    if kind == "phash":
        return phash_pixels(images)
    if kind == "dhash":
        return dhash_pixels(images)
    raise ValueError(f"kind must be one of {HASH_KINDS}, not {kind!r}")


def hamming(a: Any, b: Any) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting): uint8."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    return np.bitwise_count(x)


def _hash_partition(df: Any, *, image_column: str, kinds: tuple[str, ...], max_pixels: int | None) -> Any:
    """Hashes of one partition (pandas or cuDF) of encoded image bytes; null where the image fails.

    Decoding and hashing run on the host (Pillow's resize gives ``imagehash``'s bits); only the
    reading of the bytes and the building of the columns go through :mod:`dask_clip.backends`.
    """
    from .. import backends
    from ..columns import UINT64
    from ..image.decode import decode_bytes

    pixels, ok = [], []
    for data in backends.byte_rows(df[image_column]):
        px, _ = (None, None) if data is None else decode_bytes(data, max_pixels=max_pixels)
        ok.append(px is not None)
        if px is not None:
            pixels.append(px)
    valid = np.array(ok, bool)
    columns = {kind: backends.output_column(df, UINT64, hash_pixels(pixels, kind), valid) for kind in kinds}
    return backends.new_frame(df, columns, index=df.index)


def host_hashes(series: Any) -> tuple[np.ndarray, np.ndarray]:
    """A nullable ``uint64`` hash column on the host: (uint64 ``(n,)`` values, 0 where null; bool
    ``(n,)`` valid). Only API that pandas and cuDF Series share (``notna``, ``to_numpy``)."""
    valid = np.asarray(series.notna().to_numpy(dtype=bool), dtype=bool)
    values = np.asarray(series.to_numpy(dtype=np.uint64, na_value=0), dtype=np.uint64)
    return values, valid


def image_hashes(
    ddf: Any,
    *,
    image_column: str = "image",
    kinds: Sequence[str] = ("phash",),
    max_pixels: int | None = 89_478_485,
) -> Any:
    """Perceptual hash columns of a Dask DataFrame of encoded images, lazily.

    Parameters
    ----------
    ddf
        Dask DataFrame (pandas partitions) with ``image_column`` of encoded image bytes.
    kinds
        Hashes to compute, each a column of that name: ``"phash"``, ``"dhash"``.
    image_column
        Encoded image bytes (pandas ``binary``/object bytes, or cuDF's strings: cuDF has no
        binary dtype).
    max_pixels
        Images with more pixels are refused before decoding (a null hash), as the embedder does.

    Returns
    -------
    dask.dataframe.DataFrame
        ``ddf`` with one nullable ``uint64`` column per kind appended (null where the image
        could not be decoded), of the partitions' library (pandas ``uint64[pyarrow]``, cuDF
        ``uint64``).
    """
    from .. import backends
    from ..columns import UINT64

    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in HASH_KINDS:
            raise ValueError(f"kinds must be among {HASH_KINDS}, not {kind!r}")
    if image_column not in ddf.columns:
        raise ValueError(f"no column {image_column!r}; columns: {list(ddf.columns)}")
    empty = ddf._meta.iloc[:0]
    meta = backends.new_frame(empty, {k: backends.empty_column(empty, UINT64) for k in kinds}, index=empty.index)
    hashes = ddf.map_partitions(
        _hash_partition, image_column=image_column, kinds=kinds, max_pixels=max_pixels, meta=meta, token="image_hashes"
    )
    return ddf.assign(**{k: hashes[k] for k in kinds})


# Multi-index hashing: the 64 bits as BANDS bands of 16. Two hashes within Hamming distance k
# differ in at most k bits, so in some band by at most k // BANDS bits (pigeonhole): probing
# every band value within that radius of a row's own finds every pair, with no all-pairs join.
BANDS = 4
BAND_BITS = HASH_BITS // BANDS
PHASH_KEEP_RULES = ("first", "random")
PHASH_COLUMNS = ("hamming", "max_similarity", "duplicate", "duplicate_of")


def probe_masks(radius: int, bits: int = BAND_BITS) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` bits set: uint64 ``(m,)``, 0 first."""
    from itertools import combinations

    masks = [sum(1 << b for b in c) for r in range(radius + 1) for c in combinations(range(bits), r)]
    return np.array(masks, np.uint64)


def _keyed_rows(
    df: Any, *, hash_column: str, id_column: str | None, which_to_keep: str, seed: int, partition_info: Any = None
) -> Any:
    """One partition's rows with a hash: ``_row``, ``_h`` (int64 bits), ``_rank``, ``_id``."""
    from .. import backends
    from . import _frame

    number = partition_info["number"] if partition_info is not None else 0
    values, ok = host_hashes(df[hash_column])
    rows = _frame.row_ids(len(df), number)[ok]
    bits = values[ok]
    ids = df[id_column].reset_index(drop=True) if id_column is not None else _frame.index_values(df)
    if which_to_keep == "first":
        rank = rows.astype(np.float64) * 0.0
    else:  # seeded pseudo-random order from the hash's bits and the row id, not partitioning
        mixed = (bits ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)) * np.uint64(0xBF58476D1CE4E5B9)
        rank = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return backends.new_frame(
        df,
        {
            "_row": rows,
            "_h": bits.view(np.int64),
            "_rank": rank,
            "_id": backends.take(backends.nullable(ids), np.flatnonzero(ok)),
        },
    )


def _band_keys(df: Any, masks: np.ndarray | None) -> Any:
    """One row per (row, band[, probe]): ``_key = band << 16 | value`` (int64), the row's columns."""
    from .. import backends

    bits = np.asarray(df["_h"].to_numpy(dtype=np.int64)).view(np.uint64)
    n = len(df)
    m = 1 if masks is None else len(masks)
    parts = []
    for b in range(BANDS):
        value = (bits >> np.uint64(BAND_BITS * b)) & np.uint64((1 << BAND_BITS) - 1)
        if masks is not None:
            value = (value[:, None] ^ masks[None, :]).reshape(-1)
        parts.append((value | np.uint64(b << BAND_BITS)).astype(np.int64))
    take = np.tile(np.repeat(np.arange(n), m), BANDS)
    keys = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return backends.new_frame(df, {"_key": keys, **{c: backends.take(df[c], take) for c in df.columns}})


def _close_pairs(df: Any, k: int) -> Any:
    """Candidate pairs of one merged partition -> the ones within ``k`` bits, partner ranked ahead."""
    from .. import backends

    def host(column: str, dtype: Any) -> np.ndarray:
        return np.asarray(df[column].to_numpy(dtype=dtype))

    hq, hi = host("_h_q", np.int64).view(np.uint64), host("_h_i", np.int64).view(np.uint64)
    d = hamming(hq, hi).astype(np.int64)
    rq, ri = host("_rank_q", np.float64), host("_rank_i", np.float64)
    row_q, row_i = host("_row_q", np.int64), host("_row_i", np.int64)
    ahead = (ri < rq) | ((ri == rq) & (row_i < row_q))
    keep = np.flatnonzero(ahead & (d <= k))
    return backends.new_frame(
        df,
        {
            "_row": row_q[keep],
            "hamming": d[keep],
            "max_similarity": (1.0 - d[keep] / HASH_BITS).astype(np.float32),
            "duplicate_of": backends.take(df["_id_i"], keep),
            "_pkey": ri[keep],
            "_prow": row_i[keep],
        },
    )


def _attach(df: Any, res: Any) -> Any:
    """Input partition + its pair results -> the output columns, in input order."""
    from .. import backends
    from . import _join

    best = _join.by_position(df, _join.best_per_row(res, "max_similarity", ("_pkey", "_prow")))
    found = best["hamming"].notna()
    return backends.with_columns(
        df,
        {
            "hamming": backends.nullable(best["hamming"].fillna(0).astype("int64")).where(found),
            "max_similarity": best["max_similarity"].astype("float32"),
            "duplicate": found,
            "duplicate_of": best["duplicate_of"],
        },
    )


def phash_duplicates(
    ddf: Any,
    *,
    hash_column: str = "phash",
    k: int = 6,
    id_column: str | None = None,
    which_to_keep: str = "first",
    seed: int = 0,
    shuffle_method: str | None = None,
) -> Any:
    """Flag near-duplicates by perceptual hash: Hamming distance <= ``k`` to a row ranked ahead.

    Exact (every pair within ``k`` bits is found) without comparing all pairs: multi-index
    hashing over 4 bands of 16 bits (:data:`BANDS`), each row probing the band values within
    ``k // 4`` bits of its own, one merge on ``(band, value)``. The rule is SemDeDup's: rows in
    one global order (``which_to_keep``, then input order), a row is a duplicate when some row
    ranked ahead of it is within ``k`` (not transitive), ``duplicate_of`` names the closest
    such row (ties: the one ranked first).

    Parameters
    ----------
    ddf
        Dask DataFrame (pandas or cuDF partitions) with a ``uint64`` hash column (nullable; a
        null hash is never a duplicate), e.g. from :func:`image_hashes` or ``embed --phash``.
        On cuDF the band keys are built on the host (8 bytes a row) and the merge runs on
        the GPU; every dataframe operation goes through :mod:`dask_clip.backends`.
    k
        Largest Hamming distance counted as a duplicate, 0 to 15 (probes grow as
        ``C(16, k // 4)``).
    id_column
        Column naming rows in ``duplicate_of``; ``None``: the index labels.
    which_to_keep
        ``"first"``: earlier rows are kept; ``"random"``: a seeded order from the hashes.

    Returns
    -------
    dask.dataframe.DataFrame
        ``ddf`` with ``hamming`` (Int64, distance to ``duplicate_of``; null if none within k),
        ``max_similarity`` (float32, ``1 - hamming / 64``; NaN if none), ``duplicate`` (bool)
        and ``duplicate_of`` (the id; null if not a duplicate), in input order.
    """
    from ..validation import check_choice, check_int
    from . import _frame, _join
    from .workflow import check_dask_frame, check_shuffle_method

    check_dask_frame(ddf)
    check_int("k", k, 0)
    if k >= 4 * BANDS:
        raise ValueError(f"k must be at most {4 * BANDS - 1} (probes grow as C(16, k // 4)), not {k}")
    check_choice("which_to_keep", which_to_keep, PHASH_KEEP_RULES)
    check_shuffle_method(shuffle_method)
    if hash_column not in ddf.columns:
        raise ValueError(f"no column {hash_column!r}; columns: {list(ddf.columns)}")
    if id_column is not None and id_column not in ddf.columns:
        raise ValueError(f"no id column {id_column!r}; columns: {list(ddf.columns)}")
    ddf = _frame.settle_partitions(ddf)
    kw: dict[str, Any] = dict(hash_column=hash_column, id_column=id_column, which_to_keep=which_to_keep, seed=seed)
    keyed = ddf.map_partitions(_keyed_rows, **kw, meta=_keyed_rows(ddf._meta, **kw), token="phash_rows")
    masks = probe_masks(k // BANDS)
    index = keyed.map_partitions(_band_keys, None, meta=_band_keys(keyed._meta, None))
    query = keyed.map_partitions(_band_keys, masks, meta=_band_keys(keyed._meta, masks))
    merged = query.merge(index, on="_key", suffixes=("_q", "_i"), shuffle_method=shuffle_method)
    pairs = merged.map_partitions(_close_pairs, k, meta=_close_pairs(merged._meta, k), token="phash_pairs")
    return _join.join_back(ddf, pairs, _attach, shuffle_method=shuffle_method)
