"""The memory budget (``max_memory``) of a dedup run, and the shuffle plan that keeps to it.

``max_memory`` bounds what one task holds of the embeddings at a time:

- **k-means sample**: at most ``max_memory / SAMPLE_COPIES`` of embeddings are gathered on the
  client (the gathered Arrow column, its combined chunks, the float32 matrix, faiss' work);
- **assign**: one input partition plus a ``(rows, k)`` similarity block of at most
  ``max_memory / ASSIGN_BLOCK_SHARE``, and the partition's payload (own rows plus one copy of
  each border row per neighbouring cluster, with embeddings), held about
  :data:`ASSIGN_PAYLOAD_COPIES` times: a payload larger than ``max_memory`` in all raises
  :class:`BorderTooWideError` early, from the k-means sample's count of border rows;
- **shuffle**: clusters are packed into output partitions of at most
  ``max_memory / PAIRWISE_COPIES`` of embeddings each (sizes estimated from the k-means
  sample), routed there by ``set_index`` on the partition number, through disk (P2P spills);
- **pairwise**: one partition at a time, one cluster (own rows plus border rows) at a time,
  ``block_size`` tiles. The step holds about :data:`PAIRWISE_COPIES` copies of a partition's
  embeddings (the shuffled bytes, the float32 matrix, its normalised and rank-ordered copies),
  so a cluster larger than ``max_memory / PAIRWISE_COPIES`` cannot be processed: that raises
  :class:`ClusterTooLargeError` naming the cluster (early, on the client, when the k-means
  sample already shows it; otherwise in the task that meets it).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DaskClipError

__all__ = [
    "ASSIGN_BLOCK_SHARE",
    "ASSIGN_PAYLOAD_COPIES",
    "PAIRWISE_COPIES",
    "SAMPLE_COPIES",
    "BorderTooWideError",
    "ClusterTooLargeError",
    "ShufflePlan",
    "assign_block_rows",
    "assign_payload_bytes",
    "check_block",
    "format_bytes",
    "plan_shuffle",
    "sample_rows_cap",
]

SAMPLE_COPIES = 4
PAIRWISE_COPIES = 4
ASSIGN_BLOCK_SHARE = 8
# The assign step holds its payload about twice: the float32 rows it is packed from (the
# packed column is a zero-copy view of them) and the shards the shuffle cuts it into.
ASSIGN_PAYLOAD_COPIES = 2
# Bytes of one shuffled row besides its embedding: row id, clusters, gap, rank key, id, offsets.
ROW_OVERHEAD = 48
# Standard deviations below a sampled count for the early (client-side) error: an estimate is
# only trusted to say "too large" when even its lower bound is.
EARLY_SIGMAS = 4.0


def format_bytes(n: float) -> str:
    """``1.5 GiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class ClusterTooLargeError(DaskClipError, MemoryError):
    """One cluster's rows do not fit the pairwise block that ``max_memory`` allows.

    Attributes
    ----------
    cluster : int
        The cluster.
    rows : int
        Its rows (own plus border rows), counted or estimated.
    needed : int
        The smallest ``max_memory`` (bytes) that would hold it.
    """

    def __init__(self, message: str, cluster: int = -1, rows: int = 0, needed: int = 0) -> None:
        super().__init__(message)
        self.cluster, self.rows, self.needed = cluster, rows, needed

    def __reduce__(self) -> tuple[Any, ...]:  # survives the trip from a worker to the client
        return (type(self), (str(self), self.cluster, self.rows, self.needed))

    @classmethod
    def build(
        cls, cluster: int, own: int, border: int, dim: int, max_memory: int, *, estimated: bool = False
    ) -> ClusterTooLargeError:
        rows = own + border
        block = rows * dim * 4
        needed = block * PAIRWISE_COPIES
        how = "an estimate from the k-means sample" if estimated else "counted"
        message = (
            f"cluster {cluster} holds {rows:,} rows ({own:,} own + {border:,} border rows of neighbouring "
            f"clusters; {how}): {format_bytes(block)} of embeddings, more than the "
            f"{format_bytes(max_memory / PAIRWISE_COPIES)} one pairwise block may hold under "
            f"max_memory={format_bytes(max_memory)} (the step holds about {PAIRWISE_COPIES} copies of a "
            f"block). Raise max_memory (--max-memory) to at least {format_bytes(needed * 1.1)}, or raise "
            "n_clusters so that this cluster is split."
        )
        return cls(message, cluster, rows, needed)


class BorderTooWideError(DaskClipError, MemoryError):
    """Border rows would make one assign task's payload larger than ``max_memory``.

    Every border row is copied once per neighbouring cluster it borders, so when the k-means
    sample shows many border rows per row, the payload of a partition (and the shuffle) grows
    by that factor. Raised on the client, before any task runs.

    Attributes
    ----------
    border_rows_per_row : float
        Estimated from the k-means sample.
    needed : int
        The smallest ``max_memory`` (bytes) that would hold the largest partition's payload.
    """

    def __init__(self, message: str, border_rows_per_row: float = 0.0, needed: int = 0) -> None:
        super().__init__(message)
        self.border_rows_per_row, self.needed = border_rows_per_row, needed

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.border_rows_per_row, self.needed))

    @classmethod
    def build(
        cls,
        partition_rows: int,
        border_rows_per_row: float,
        dim: int,
        max_memory: int,
        *,
        half_margin_rows_per_row: float,
        sample_rows_per_centroid: float,
    ) -> BorderTooWideError:
        """The error for the largest partition (``partition_rows``), with what to change.

        ``half_margin_rows_per_row`` and ``sample_rows_per_centroid`` are only for the message:
        the estimate at ``border_margin=0.5``, and the k-means sample's rows per centroid.
        """
        needed = assign_payload_bytes(partition_rows, border_rows_per_row, dim)
        message = (
            f"border-aware dedup: rows border about {border_rows_per_row:.2f} other clusters each (estimated "
            f"from the k-means sample), so the assign step of a {partition_rows:,}-row partition would hold "
            f"{partition_rows * (1 + border_rows_per_row):,.0f} payload rows, {format_bytes(needed)} with its "
            f"copies, more than max_memory={format_bytes(max_memory)}, and the shuffle would move "
            f"{1 + border_rows_per_row:.1f}x the embeddings. The k-means sample had {sample_rows_per_centroid:.0f} "
            "rows per centroid: rough centroids have wide borders, and a larger sample (max_train_rows, "
            "--max-train-rows; 256 per centroid is faiss' default) or more iterations make them thinner. "
            f"Otherwise: border_margin=0.5 (pairs within eps/4 guaranteed) would give about "
            f"{half_margin_rows_per_row:.2f}; smaller input partitions bound the step but not the shuffle; "
            "border_aware=False (--plain-semdedup) is plain SemDeDup."
        )
        return cls(message, border_rows_per_row, needed)


def assign_payload_bytes(partition_rows: int, border_rows_per_row: float, dim: int) -> int:
    """Bytes the assign step of a ``partition_rows`` partition holds of its payload (all copies)."""
    rows = partition_rows * (1.0 + border_rows_per_row)
    return int(rows * (dim * 4 + ROW_OVERHEAD) * ASSIGN_PAYLOAD_COPIES)


def check_block(cluster: int, own: int, border: int, dim: int, max_memory: int | None) -> None:
    """Raise :class:`ClusterTooLargeError` if one cluster's block exceeds its share of ``max_memory``."""
    if max_memory is not None and (own + border) * dim * 4 * PAIRWISE_COPIES > max_memory:
        raise ClusterTooLargeError.build(cluster, own, border, dim, max_memory)


def sample_rows_cap(max_memory: int | None, dim: int) -> int | None:
    """Most k-means training rows that ``max_memory`` allows (None: no cap)."""
    if max_memory is None or dim <= 0:
        return None
    return max(1, max_memory // (SAMPLE_COPIES * 4 * dim))


def assign_block_rows(max_memory: int | None, n_clusters: int, default: int) -> int:
    """Rows per ``(rows, k)`` similarity block of the assign step.

    The border-aware step holds about four ``(rows, k)`` float32 arrays per block (similarities,
    gaps, margins, mask); the block gets ``max_memory / ASSIGN_BLOCK_SHARE`` of them, and at most
    ``default`` rows (256 MiB of them without a budget).
    """
    share = (max_memory // ASSIGN_BLOCK_SHARE) if max_memory is not None else 256 * 2**20
    return int(max(64, min(default, share // (16 * max(n_clusters, 1)))))


@dataclass(frozen=True)
class ShufflePlan:
    """Where each cluster goes in the cluster shuffle.

    Attributes
    ----------
    part_of_cluster : numpy.ndarray
        int64 ``(k,)``: output partition of each cluster.
    npartitions : int
        Output partitions.
    estimated_rows : numpy.ndarray
        float64 ``(k,)``: estimated rows per cluster block (own plus border rows).
    """

    part_of_cluster: np.ndarray
    npartitions: int
    estimated_rows: np.ndarray


def plan_shuffle(
    own_counts: np.ndarray,
    border_counts: np.ndarray,
    *,
    scale: float,
    dim: int,
    max_memory: int,
    min_partitions: int,
) -> ShufflePlan:
    """Pack clusters into output partitions of at most ``max_memory / PAIRWISE_COPIES`` each.

    Parameters
    ----------
    own_counts, border_counts
        ``(k,)``: rows of the k-means sample nearest to each cluster, and border rows each
        cluster receives per as many rows (estimated on held-out rows, so possibly fractional).
    scale
        Input rows per sampled row.
    dim
        Embedding dimension.
    max_memory
        The budget in bytes.
    min_partitions
        At least this many partitions where the data allows (parallelism).

    Returns
    -------
    ShufflePlan

    Raises
    ------
    ClusterTooLargeError
        When even a cautious lower estimate of one cluster exceeds its share of the budget.
    """
    own = np.asarray(own_counts, dtype=np.float64)
    border = np.asarray(border_counts, dtype=np.float64)
    sampled = own + border
    capacity = max_memory / PAIRWISE_COPIES / (dim * 4 + ROW_OVERHEAD)  # rows per partition
    lower = np.maximum(sampled - EARLY_SIGMAS * np.sqrt(sampled), 0.0) * scale
    worst = int(np.argmax(lower - capacity)) if len(lower) else 0
    if len(lower) and lower[worst] > capacity:
        frac = own[worst] / max(sampled[worst], 1.0)
        rows = int(lower[worst])
        raise ClusterTooLargeError.build(
            worst, int(rows * frac), rows - int(rows * frac), dim, max_memory, estimated=True
        )
    estimated = np.maximum(sampled * scale, 1.0)  # unseen clusters still get a partition
    target = min(capacity, max(float(estimated.sum()) / max(min_partitions, 1), 1.0))
    # worst-fit decreasing: each cluster into the emptiest partition that still has room
    order = np.argsort(-estimated, kind="stable")
    heap: list[tuple[float, int]] = []  # (-room, partition)
    part = np.empty(len(estimated), dtype=np.int64)
    n_parts = 0
    for c in order:
        size = estimated[c]
        if heap and -heap[0][0] >= size:
            room, p = heapq.heappop(heap)
            heapq.heappush(heap, (room + size, p))
        else:
            p = n_parts
            n_parts += 1
            heapq.heappush(heap, (-(max(target, size) - size), p))
        part[c] = p
    return ShufflePlan(part, max(n_parts, 1), estimated)
