"""Step 2: give every row its nearest centroid, its similarity to it, and its rank key.

One task per input partition (``map_partitions``); the output is the small payload that the
cluster shuffle moves: row id, cluster, rank key, caller's id and the embedding, for rows that
have an embedding only. Rows without one never enter the shuffle; they get ``cluster = -1``
when the results are joined back. Border-aware runs (:mod:`.border`) also build a second,
separate payload from the same similarity block: one row for every neighbouring cluster a row
is a border row of, carrying the row's low-dimensional sketch instead of its embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from ..validation import KEEP_RULES
from . import _frame

__all__ = [
    "assign_border_partition",
    "assign_partition",
    "nearest_centroid",
    "nearest_centroid_and_border",
    "rank_keys",
]


# Rows per matmul against the centroids: bounds the (rows, k) similarity block.
ASSIGN_BLOCK_ROWS = 8192

_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 constants as signed int64
_M2 = 0x94D049BB133111EB - (1 << 64)


def _shr(z: Any, s: int) -> Any:
    """Logical right shift of an int64 tensor (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Any) -> Any:
    """splitmix64's finaliser on an int64 tensor (multiplications wrap modulo 2**64)."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def random_keys(x: Any, seed: int) -> Any:
    """Seeded pseudo-random keys in [0, 1) from each row's bits, independent of partitioning.

    Parameters
    ----------
    x
        torch float32 ``(n, d)``.
    seed
        Seed; a different seed gives an unrelated order.

    Returns
    -------
    torch.Tensor
        float64 ``(n,)``; identical rows get identical keys (ties are broken by row id later).
    """
    import torch

    d = x.shape[1]
    rng = np.random.default_rng(seed)
    mult = torch.from_numpy(rng.integers(1, 2**62, size=d, dtype=np.int64) * 2 + 1).to(x.device)
    salt = int(rng.integers(0, 2**62))
    bits = x.contiguous().view(torch.int32)
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], ASSIGN_BLOCK_ROWS):  # bounds the (rows, d) int64 temporary
        h = _mix64((bits[s : s + ASSIGN_BLOCK_ROWS].to(torch.int64) * mult).sum(dim=1) ^ salt)
        out[s : s + ASSIGN_BLOCK_ROWS] = _shr(h, 11).to(torch.float64) / float(1 << 53)
    return out


def nearest_centroid(x: Any, centroids: Any, *, block_rows: int = ASSIGN_BLOCK_ROWS) -> tuple[Any, Any]:
    """Nearest centroid of each row by cosine similarity, in blocks of rows.

    Parameters
    ----------
    x
        torch float32 ``(n, d)``, unit-length rows.
    centroids
        torch float32 ``(k, d)``, unit length, same device.
    block_rows
        Rows per ``(block_rows, k)`` similarity block.

    Returns
    -------
    labels : torch.Tensor
        int32 ``(n,)``, the index of the most similar centroid (first on ties).
    similarity : torch.Tensor
        float32 ``(n,)``, cosine similarity to that centroid, summed in float64 so the value of
        a row does not depend on which other rows share its matmul block.
    """
    import torch

    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int32, device=x.device)
    sims = torch.empty(n, dtype=torch.float32, device=x.device)
    c64 = centroids.to(torch.float64)
    for s in range(0, n, block_rows):
        xb = x[s : s + block_rows]
        lab = torch.argmax(xb @ centroids.T, dim=1)
        labels[s : s + block_rows] = lab.to(torch.int32)
        sims[s : s + block_rows] = (xb.to(torch.float64) * c64[lab]).sum(dim=1).to(torch.float32)
    return labels, sims


def nearest_centroid_and_border(
    x: Any, centroids: Any, scale: float, *, block_rows: int = ASSIGN_BLOCK_ROWS, one_way: bool = False
) -> tuple[Any, Any, tuple[Any, Any, Any]]:
    """:func:`nearest_centroid`, plus the border rows of :func:`.border.split_border_rows`.

    Parameters
    ----------
    x
        torch float32 ``(n, d)``, unit-length rows.
    centroids
        torch float32 ``(k, d)``, unit length, same device.
    scale
        :func:`.border.margin_scale`.
    block_rows
        Rows per ``(block_rows, k)`` block (the border test holds about four such blocks).
    one_way
        :func:`.border.split_border_rows`' one-way rule (``scale`` then doubled by the caller).

    Returns
    -------
    labels, similarity
        As :func:`nearest_centroid` (the same values).
    (rows, hosts, gaps)
        int64 ``(g,)``, int64 ``(g,)``, float32 ``(g,)``: row ``rows[i]`` is a border row of
        cluster ``hosts[i]``, with gap ``gaps[i]``.
    """
    import torch

    from .border import split_border_rows

    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int32, device=x.device)
    sims = torch.empty(n, dtype=torch.float32, device=x.device)
    c64 = centroids.to(torch.float64)
    found: list[tuple[Any, Any, Any]] = []
    for s in range(0, n, block_rows):
        xb = x[s : s + block_rows]
        block = xb @ centroids.T
        lab = torch.argmax(block, dim=1)
        labels[s : s + block_rows] = lab.to(torch.int32)
        sims[s : s + block_rows] = (xb.to(torch.float64) * c64[lab]).sum(dim=1).to(torch.float32)
        rows, hosts, gaps = split_border_rows(block, lab, centroids, scale, one_way=one_way)
        found.append((rows + s, hosts, gaps))
        del block
    if not found:
        empty = torch.empty(0, dtype=torch.int64, device=x.device)
        return labels, sims, (empty, empty, torch.empty(0, dtype=torch.float32, device=x.device))
    rows, hosts, gaps = (torch.cat([f[j] for f in found]) for j in range(3))
    return labels, sims, (rows, hosts, gaps)


def rank_keys(similarity: Any, x: Any, which_to_keep: str, seed: int) -> Any:
    """Sort key of the keep rule: ascending key = kept first (then ascending row id).

    ``"hard"`` (SemDeDup's default): least similar to the centroid first. ``"easy"``: most
    similar first. ``"random"``: :func:`random_keys`. Returns torch float64 ``(n,)``.
    """
    import torch

    if which_to_keep == "hard":
        return similarity.to(torch.float64)
    if which_to_keep == "easy":
        return -similarity.to(torch.float64)
    if which_to_keep == "random":
        return random_keys(x, seed)
    raise ValueError(f"which_to_keep must be one of {KEEP_RULES}, not {which_to_keep!r}")


def assign_partition(
    df: Any,
    centroids: np.ndarray,
    *,
    embedding_column: str,
    id_column: str | None,
    which_to_keep: str,
    seed: int,
    device: str | None = None,
    cluster_parts: np.ndarray | None = None,
    block_rows: int = ASSIGN_BLOCK_ROWS,
    partition_info: dict | None = None,
) -> Any:
    """The cluster-shuffle payload of one partition (plain SemDeDup, and the own rows of a border run).

    Parameters
    ----------
    df
        One pandas or cuDF partition with ``embedding_column``.
    centroids
        float32 ``(k, d)`` unit-length centroids.
    embedding_column, id_column
        Columns to read; ``id_column=None`` takes the index labels as ids.
    which_to_keep, seed
        Keep rule of :func:`rank_keys`.
    device
        torch device; ``None``: CPU for pandas, CUDA for cuDF.
    cluster_parts
        int64 ``(k,)`` output partition of each cluster (:func:`.budget.plan_shuffle`); adds the
        column ``_part`` that the shuffle routes by.
    block_rows
        Rows per ``(rows, k)`` similarity block.
    partition_info
        Passed by Dask; its ``"number"`` makes the row ids.

    Returns
    -------
    DataFrame
        Same backend, one row per row of ``df`` that has an embedding, columns ``_row`` (int64),
        ``cluster`` (int32), ``_rank`` (float64), ``_id`` (the id's dtype, nullable) and
        ``_emb`` (the unit-length embeddings, packed by :func:`dask_clip.backends.pack_rows`), with a
        default index.
    """
    number = partition_info["number"] if partition_info is not None else 0
    own, _ = _assign(
        df,
        centroids,
        number=number,
        embedding_column=embedding_column,
        id_column=id_column,
        which_to_keep=which_to_keep,
        seed=seed,
        device=device,
        cluster_parts=cluster_parts,
        block_rows=block_rows,
    )
    return own


def assign_border_partition(
    df: Any,
    centroids: np.ndarray,
    *,
    number: int,
    border_scale: float,
    sketch_basis: np.ndarray,
    embedding_column: str,
    id_column: str | None,
    which_to_keep: str,
    seed: int,
    device: str | None = None,
    cluster_parts: np.ndarray | None = None,
    block_rows: int = ASSIGN_BLOCK_ROWS,
    with_embeddings: bool = False,
    one_way: bool = False,
) -> tuple[Any, Any]:
    """The two shuffle payloads of one partition in a border-aware run: own rows and border rows.

    Parameters
    ----------
    df, centroids, embedding_column, id_column, which_to_keep, seed, device, cluster_parts, block_rows
        As :func:`assign_partition`.
    number
        The partition's number (makes the row ids).
    border_scale
        Border margins' scale (:func:`.border.margin_scale`).
    sketch_basis
        float32 ``(d, r)`` orthonormal basis of :func:`.border.sketch`.
    with_embeddings
        Border rows also carry ``_id`` and ``_emb`` (their embedding), for data where the sketch
        bound prunes too little (:func:`.border.sketch_pays_off`): the host block then checks
        the pairs itself.
    one_way
        Border rows by the one-way rule of :mod:`.border` (``border_scale`` is then twice the
        margin scale).

    Returns
    -------
    own : DataFrame
        :func:`assign_partition`'s payload, the same values.
    border_rows : DataFrame
        One row per (row, neighbouring cluster it is a border row of): ``_row`` (int64),
        ``cluster`` (int32, the neighbouring cluster: what the shuffle routes by), ``_home``
        (int32, the row's own cluster), ``_rank`` (float64) and ``_sk``, the row's ``(R + 1)``-value
        sketch packed in one column (:data:`.border.SKETCH_COLUMN`): a border row travels
        without its embedding (and ``_part`` with ``cluster_parts``; ``_id`` and ``_emb`` with
        ``with_embeddings``).
    """
    own, guests = _assign(
        df,
        centroids,
        number=number,
        embedding_column=embedding_column,
        id_column=id_column,
        which_to_keep=which_to_keep,
        seed=seed,
        device=device,
        cluster_parts=cluster_parts,
        block_rows=block_rows,
        border_scale=border_scale,
        sketch_basis=sketch_basis,
        with_embeddings=with_embeddings,
        one_way=one_way,
    )
    return own, guests


def _assign(
    df: Any,
    centroids: np.ndarray,
    *,
    number: int,
    embedding_column: str,
    id_column: str | None,
    which_to_keep: str,
    seed: int,
    device: str | None,
    cluster_parts: np.ndarray | None,
    block_rows: int,
    border_scale: float | None = None,
    sketch_basis: np.ndarray | None = None,
    with_embeddings: bool = False,
    one_way: bool = False,
) -> tuple[Any, Any]:
    """Own-row payload, and (``border_scale`` given) the border-row payload, of one partition."""
    import torch

    from .border import SKETCH_COLUMN, sketch

    ids = df[id_column].reset_index(drop=True) if id_column is not None else _frame.index_values(df)
    ids = backends.nullable(ids)
    x, valid = backends.embedding_matrix(df[embedding_column], device=device)
    border = border_scale is not None
    g_rows = g_hosts = torch.empty(0, dtype=torch.int64)
    if x.shape[0]:
        x = torch.nn.functional.normalize(x, dim=1)
        c = torch.as_tensor(np.asarray(centroids, np.float32), device=x.device)
        if c.shape[1] != x.shape[1]:
            raise ValueError(f"embeddings have {x.shape[1]} dims, centroids {c.shape[1]}")
        if border_scale is not None:
            labels, sims, (g_rows, g_hosts, _) = nearest_centroid_and_border(
                x, c, border_scale, block_rows=block_rows, one_way=one_way
            )
        else:
            labels, sims = nearest_centroid(x, c, block_rows=block_rows)
        keys = rank_keys(sims, x, which_to_keep, seed)
    else:
        x = torch.empty((0, 0), dtype=torch.float32)
        labels = torch.empty(0, dtype=torch.int32)
        sims = torch.empty(0, dtype=torch.float32)
        keys = torch.empty(0, dtype=torch.float64)
    pos = torch.nonzero(valid.cpu()).flatten().numpy()
    rows = _frame.row_ids(len(df), number)[pos]
    own = {
        "_row": backends.new_column(df, rows, "int64"),
        "cluster": backends.new_column(df, labels, "int32"),
        "_rank": backends.new_column(df, keys, "float64"),
        "_id": backends.take(ids, pos),
        "_emb": backends.pack_rows(df, x, df[embedding_column], pos),
    }
    if cluster_parts is not None:
        parts = np.asarray(cluster_parts, dtype=np.int64)
        own["_part"] = backends.new_column(df, parts[_frame.to_host(labels).astype(np.int64)], "int64")
    if not border:
        return backends.new_frame(df, own), None
    # border rows: ids, ranks and sketches only (the exact check reads the embedding where it lives)
    g_dev = g_rows.to(labels.device)
    if sketch_basis is None:
        raise ValueError("border rows need the sketch basis")
    basis = torch.as_tensor(np.asarray(sketch_basis, np.float32), device=x.device)
    width = basis.shape[1] + 1
    # sketch every row once, then gather: a row is a border row of several clusters
    sk = sketch(x, basis)[g_dev] if g_dev.numel() else torch.empty((0, width), dtype=torch.float32)
    g_host = _frame.to_host(g_rows).astype(np.int64)
    guests = {
        "_row": backends.new_column(df, rows[g_host], "int64"),
        "cluster": backends.new_column(df, g_hosts, "int32"),
        "_home": backends.new_column(df, labels[g_dev], "int32"),
        "_rank": backends.new_column(df, keys[g_dev], "float64"),
    }
    guests[SKETCH_COLUMN] = backends.pack_floats(df, sk)
    if with_embeddings:
        guests["_id"] = backends.take(ids, pos[g_host])
        guests["_emb"] = backends.pack_rows(df, x[g_dev], df[embedding_column], pos[g_host])
    if cluster_parts is not None:
        parts = np.asarray(cluster_parts, dtype=np.int64)
        guests["_part"] = backends.new_column(df, parts[_frame.to_host(g_hosts).astype(np.int64)], "int64")
    return backends.new_frame(df, own), backends.new_frame(df, guests)
