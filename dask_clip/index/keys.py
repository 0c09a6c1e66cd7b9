"""Step 1: choose the faiss index from the row count, the dimension and a memory budget.

The rule follows autofaiss' (``get_optimal_index_keys_v2``): exact search while it is cheap,
then an inverted file (IVF) with about ``4 * sqrt(n)`` lists, whose codes are the most precise
that fit the memory budget — full vectors (``Flat``), 8-bit scalar quantisation (``SQ8``), or
product quantisation (``PQm``) — with an HNSW coarse quantiser once there are many lists. The
vectors are unit length and searched by inner product (cosine similarity).

Where the rule departs from autofaiss: exact search (``Flat``) up to 2**24 stored floats
(32,768 rows at D = 512), where one query scans at most 64 MiB (a few ms on one core), instead
of autofaiss' 1,000 rows; and no OPQ rotation, so every key here supports id selectors
(filters) and merging shards as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "FLAT_MAX_FLOATS",
    "IndexChoice",
    "choose_index_key",
    "default_nprobe",
    "estimate_index_bytes",
    "parse_memory",
]

DEFAULT_MAX_MEMORY = "4GB"
# Exact search up to this many stored floats: one query reads at most 64 MiB.
FLAT_MAX_FLOATS = 2**24
# faiss' floor: fewer training points per list than this gives a poor k-means (it warns).
MIN_TRAIN_PER_LIST = 39
# Training points per list for the coarse k-means (faiss recommends 30-256).
TRAIN_ROWS_PER_LIST = 50
# Product quantisers need 256 centroids per sub-quantiser: train them on at least this many rows.
MIN_PQ_TRAIN_ROWS = 2**16
# Lists from which the coarse quantiser is an HNSW graph instead of an exhaustive scan.
HNSW_COARSE_FROM_LISTS = 2**14
# Bytes per PQ code, most precise first; only sizes that divide D are used.
PQ_CODE_SIZES = (128, 96, 64, 48, 32, 24, 16, 8)


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``4_000_000_000``, ``"4GB"``, ``"512MiB"``, ... (:func:`dask.utils.parse_bytes`).

    Raises
    ------
    ValueError
        Not a size, or not positive.
    """
    from dask.utils import parse_bytes

    try:
        size = int(value) if isinstance(value, (int, float)) else int(parse_bytes(str(value)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"max_memory={value!r} is not a size; give bytes or a string such as '4GB'") from err
    if size <= 0:
        raise ValueError(f"max_memory={value!r} must be positive")
    return size


def default_nprobe(nlist: int) -> int:
    """Lists visited per query by default: ``nlist / 64`` within [8, 256] (never above ``nlist``).

    At 1M clustered vectors (4,096 lists) that is 64 lists, ~1.6 % of the vectors; see
    ``benchmarks/results/index-scale.json`` for the recall and latency it gives.
    """
    return max(1, min(nlist, max(8, min(256, nlist // 64))))


def _nlist(n_rows: int) -> int:
    """A power of two near ``4 * sqrt(n)``, with at least MIN_TRAIN_PER_LIST rows per list."""
    target = 4 * math.sqrt(n_rows)
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * MIN_TRAIN_PER_LIST > n_rows:
        nlist //= 2
    return nlist


def _parse_ivf(index_key: str) -> tuple[int, str, str] | None:
    """(nlist, coarse quantiser, codec) of an ``IVF{n}[_HNSW32],{codec}`` key, else None."""
    head, _, codec = index_key.partition(",")
    if not head.startswith("IVF") or not codec:
        return None
    lists, _, coarse = head[3:].partition("_")
    if not lists.isdigit():
        return None
    return int(lists), coarse or "Flat", codec


def estimate_index_bytes(index_key: str, n_rows: int, dim: int) -> int:
    """Approximate memory of an index of ``n_rows`` vectors of ``dim`` floats, in bytes.

    Counts codes, 8-byte ids and the coarse centroids; faiss' own overheads are a few percent.

    Raises
    ------
    ValueError
        A key this rule does not know (``Flat``, ``IVF{n}[_HNSW32],{Flat|SQ8|PQ{m}[x8]}``).
    """
    if index_key == "Flat":
        return n_rows * (4 * dim + 8)
    parsed = _parse_ivf(index_key)
    if parsed is None:
        raise ValueError(f"cannot estimate the size of index_key={index_key!r}")
    nlist, coarse, codec = parsed
    coarse_bytes = nlist * 4 * dim + (nlist * 32 * 2 * 4 if coarse.startswith("HNSW") else 0)
    if codec == "Flat":
        code = 4 * dim
    elif codec == "SQ8":
        code = dim
    elif codec.startswith("PQ"):
        code = int(codec[2:].split("x")[0])
        coarse_bytes += 256 * 4 * dim  # the PQ centroids
    else:
        raise ValueError(f"cannot estimate the size of index_key={index_key!r}")
    return n_rows * (code + 8) + coarse_bytes


@dataclass(frozen=True)
class IndexChoice:
    """What :func:`choose_index_key` decided, and why.

    Attributes
    ----------
    index_key : str
        A faiss ``index_factory`` string (metric: inner product).
    nprobe : int or None
        Default lists visited per query (None for exact search).
    train_rows : int
        Rows of the seeded training sample (0: nothing to train).
    on_disk : bool
        Inverted lists memory-mapped from disk because the index exceeds ``max_memory``.
    estimated_bytes : int
        Approximate index size.
    reason : str
        One sentence for logs and the manifest.
    """

    index_key: str
    nprobe: int | None
    train_rows: int
    on_disk: bool
    estimated_bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)


def _train_rows(index_key: str, n_rows: int) -> int:
    parsed = _parse_ivf(index_key)
    if parsed is None:
        return 0
    nlist, _, codec = parsed
    rows = TRAIN_ROWS_PER_LIST * nlist
    if codec.startswith("PQ"):
        rows = max(rows, MIN_PQ_TRAIN_ROWS)
    return min(n_rows, rows)


def describe_key(index_key: str, n_rows: int, dim: int, max_memory: int, on_disk: bool | None = None) -> IndexChoice:
    """An :class:`IndexChoice` for a key the user gave (``index_key`` other than ``"auto"``).

    ``on_disk=None`` puts the inverted lists on disk when the estimate exceeds ``max_memory``.
    """
    parsed = _parse_ivf(index_key)
    if index_key != "Flat" and parsed is None:
        raise ValueError(
            f"index_key={index_key!r}; give 'auto', 'Flat' or an inverted file "
            "'IVF{nlist}[_HNSW32],{Flat|SQ8|PQ{m}}' (e.g. 'IVF4096,Flat')"
        )
    estimated = estimate_index_bytes(index_key, n_rows, dim)
    if parsed is not None:
        nlist, _, codec = parsed
        if codec.startswith("PQ") and dim % int(codec[2:].split("x")[0]):
            raise ValueError(f"index_key={index_key!r}: the PQ code size must divide the dimension {dim}")
        if nlist > max(1, n_rows):
            raise ValueError(f"index_key={index_key!r} has more lists ({nlist}) than rows ({n_rows})")
    if on_disk is None:
        on_disk = parsed is not None and estimated > max_memory
    if on_disk and parsed is None:
        raise ValueError("on-disk inverted lists need an IVF index_key, not 'Flat'")
    nprobe = default_nprobe(parsed[0]) if parsed is not None else None
    return IndexChoice(index_key, nprobe, _train_rows(index_key, n_rows), bool(on_disk), estimated, "given")


def choose_index_key(n_rows: int, dim: int, max_memory: int | str = DEFAULT_MAX_MEMORY) -> IndexChoice:
    """Choose an index for ``n_rows`` unit vectors of ``dim`` floats within ``max_memory``.

    Parameters
    ----------
    n_rows
        Vectors to index (an upper bound is fine: rows without an embedding are skipped later).
    dim
        Embedding width D.
    max_memory
        Memory the index may take when searched (bytes, or ``"4GB"``-style strings).

    Returns
    -------
    IndexChoice
        ``Flat`` while ``n_rows * dim <= 2**24``; else ``IVF{nlist},Flat`` if it fits, else
        ``IVF{nlist},SQ8``, else the largest ``IVF{nlist},PQ{m}`` that fits; HNSW32 coarse
        quantiser from 16,384 lists; inverted lists on disk when even the smallest code does
        not fit.

    Raises
    ------
    ValueError
        Non-positive sizes.
    """
    if n_rows < 0 or dim <= 0:
        raise ValueError(f"n_rows={n_rows} and dim={dim} must be non-negative and positive")
    budget = parse_memory(max_memory)
    if n_rows * dim <= FLAT_MAX_FLOATS or _nlist(n_rows) < 2:
        estimated = estimate_index_bytes("Flat", n_rows, dim)
        reason = f"{n_rows} rows x {dim} dims <= 2**24 floats: exact search"
        return IndexChoice("Flat", None, 0, False, estimated, reason)
    nlist = _nlist(n_rows)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_COARSE_FROM_LISTS else f"IVF{nlist}"
    codecs = ["Flat", "SQ8", *(f"PQ{m}" for m in PQ_CODE_SIZES if dim % m == 0 and m < dim)]
    for codec in codecs:
        key = f"{coarse},{codec}"
        estimated = estimate_index_bytes(key, n_rows, dim)
        if estimated <= budget:
            reason = f"{n_rows} rows: {nlist} lists; {codec} codes are the most precise within {budget} bytes"
            return IndexChoice(key, default_nprobe(nlist), _train_rows(key, n_rows), False, estimated, reason)
    key = f"{coarse},{codecs[-1]}"
    estimated = estimate_index_bytes(key, n_rows, dim)
    reason = f"{n_rows} rows: even {codecs[-1]} codes ({estimated} bytes) exceed {budget} bytes: lists on disk"
    return IndexChoice(key, default_nprobe(nlist), _train_rows(key, n_rows), True, estimated, reason)
