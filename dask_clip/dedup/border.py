"""Border-aware SemDeDup: rows close to another centroid are also compared across the border.

SemDeDup compares rows only inside their k-means cluster, so a near-duplicate pair whose two
rows fall into different clusters is never found. This module closes that hole with a bound,
not a heuristic.

Geometry
--------
Let ``a``, ``b`` be unit vectors with ``cos(a, b) >= 1 - eps``, so ``|a - b| <= delta =
sqrt(2 eps)``. Let ``a`` be nearest to centroid ``c_A`` and ``b`` to ``c_B``, ``A != B``. Their
*gaps* ``g_a = a.c_A - a.c_B >= 0`` and ``g_b = b.c_B - b.c_A >= 0`` add up to

    g_a + g_b = (a - b).(c_A - c_B) <= delta * |c_A - c_B|        (Cauchy-Schwarz)

so ``min(g_a, g_b) <= h_AB = delta * |c_A - c_B| / 2``, and the other gap is at most
``2 h_AB - min(g_a, g_b)``. Hence:

- a row ``a`` of cluster A is a **border row** of every cluster B with ``g_a(B) <= h_AB`` (all
  such B, not only the second-nearest: the partner may sit in the third-nearest cluster);
- in cluster B's block, a border row ``a`` from A is tested against the rows ``b`` of B (only
  those with ``g_b(A) <= 2 h_AB - g_a(B)`` can pair with it; the sketch bound below does the
  pruning).

Every pair with cosine >= 1 - eps then meets in one cluster's block at least: its common
cluster, or the cluster of whichever row has the smaller gap, whatever the centroids.

What travels, and the second bound
----------------------------------
A border row is not shipped with its embedding: it travels as its ``(R + 1)``-dim *sketch* only.
With ``Q`` an orthonormal ``(d, R)`` basis (the centroids' top principal directions,
:func:`sketch_basis`), ``z = x Q`` and the residual ``e = x - z Q^T`` (orthogonal to ``Q``),
``a.b = z_a.z_b + e_a.e_b <= z_a.z_b + |e_a||e_b|`` (Cauchy-Schwarz), so the sketches
``s = [z, |e|]`` satisfy ``s_a.s_b >= a.b`` for every pair. In cluster B's block each border row's sketch
is tested against the sketches of B's own rows (:func:`sketch_candidates`): a pair with
``s_a.s_b < t - SKETCH_SLACK`` has ``a.b < t`` and cannot be a duplicate. The test has two
levels: every pair is tested with the *coarse* sketches of rank ``r = R / 2``
(:func:`coarse_sketch`: the first ``r`` coordinates and the norm of the rest, the same bound for
the basis' first ``r`` columns, never tighter than the fine one), in dense tiles; the few pairs
that pass are tested again with the rank-``R`` sketches. A pair either level rules out cannot be
a duplicate. The pairs left are *candidates*: each is sent, with the own row's embedding, to the
border row's own cluster block (one more shuffle on ``cluster``, small, routed exactly as the
first: Dask hashes the cluster values, or routes by the ``_part`` column of a shuffle plan, so a
cluster lands in the same partition number in every shuffle;
:func:`dask_clip.dedup.pairwise.verify_candidates` raises if a candidate's border row is not
there). There both embeddings are at hand and the exact similarity decides. So: the gap bound
brings every pair within eps into some block, the sketch bound keeps it as a candidate, the
routing brings both vectors together, and the exact check counts it when ``>= t``. No bound can
lose a pair; they only decide how much is computed and moved. (A small input runs every block in
one task, :func:`dask_clip.dedup.pairwise.local_results`: the same blocks and candidates, with
nothing to route.) (The border rows' sketches are taken of the rows as the assign step
normalised them, the own rows' sketches and the exact check of rows normalised once more, as the
plain step does: a change of ~1e-7, far inside :data:`SKETCH_SLACK`; :data:`RESIDUAL_SLACK`
makes ``|e|`` err upwards.)

One way, at twice the margin
----------------------------
Where rows sit well inside the margin of several clusters at once (a cloud that several
centroids split: every row is a border row of the others), both rows of most pairs are border
rows of each other's cluster, and every such pair is tested twice. Then rows go *one way*
instead: a row of cluster A is a border row of B only if ``B > A`` (cluster numbers) and
``g_a(B) <= 2 h_AB``. A pair ``a`` in A, ``b`` in B, ``A < B``, has ``g_a <= 2 h_AB - g_b <=
2 h_AB`` (``g_b >= 0``, up to float32 rounding, inside :data:`MARGIN_SLACK` as above), so ``a``
meets all of B's rows in B's block: every pair within eps is still tested, once. The plan
chooses this where the sample says it tests fewer (border row, own row) pairs than the two-way
rule (:func:`dask_clip.dedup.workflow.one_way_pays_off`); the rest of the run is the same.

With ``border_margin = f < 1`` the margins shrink by ``f`` and the same argument holds for
``delta' = f * delta``: every pair with cosine >= ``1 - f**2 * eps`` is guaranteed, pairs
between ``1 - eps`` and that are found unless their difference points along the centroids'
difference. :data:`MARGIN_SLACK` absorbs float32 rounding of the similarities.

Keep rule across a border
-------------------------
Within a cluster the order is the paper's (``(rank key, row id)``, the key of
:func:`~dask_clip.dedup.assign.rank_keys` measured to the row's own centroid). Across a
border the same key orders the two rows: the row ranked later is flagged and names the
earlier one in ``duplicate_of``. Every pair is thus decided once, by one global order, and a
cluster with no cross-border duplicate gets exactly the plain SemDeDup answer. Cross-border
similarities count only when they reach ``1 - eps`` (the pairs the bound covers), so
``max_similarity`` is the plain within-cluster value unless a cross-border duplicate was found.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "CANDIDATES_PER_BORDER_ROW",
    "LABEL_BLOCK_ENTRIES",
    "MARGIN_CHUNK",
    "MARGIN_SLACK",
    "RESIDUAL_SLACK",
    "SKETCH_COLUMN",
    "SKETCH_SLACK",
    "coarse_dims",
    "coarse_sketch",
    "duplicate_threshold",
    "exact_pairs",
    "half_margins",
    "margin_scale",
    "pair_margins",
    "sketch",
    "sketch_basis",
    "sketch_candidates",
    "sketch_dims",
    "sketch_pays_off",
    "split_border_rows",
    "tile_products",
]

# Float32 similarities of unit vectors in a few hundred dimensions are off by ~1e-6; the
# margins are widened by this much so rounding can never drop a pair the bound covers.
MARGIN_SLACK = 1e-4


def margin_scale(eps: float, fraction: float = 1.0) -> float:
    """``fraction * sqrt(2 eps) / 2``: the margin of two clusters is this times ``|c_A - c_B|``.

    Parameters
    ----------
    eps
        The dedup threshold (duplicate when cosine >= 1 - eps).
    fraction
        ``border_margin``: 1 guarantees every pair within eps; ``f`` guarantees pairs within
        ``f**2 * eps``.
    """
    return float(fraction * np.sqrt(2.0 * eps) / 2.0)


# Index pairs per gather in :func:`pair_margins`: bounds its two ``(pairs, d)`` temporaries
# (64 MiB each at d = 512) however many border candidates a block of rows has.
MARGIN_CHUNK = 32768


def pair_margins(centroids: Any, a: Any, b: Any, scale: float) -> Any:
    """The border margins ``h_AB = scale * |c_A - c_B| + MARGIN_SLACK`` of cluster pairs.

    Computed from the centroids on the fly (never a ``(k, k)`` matrix: k may be 50,000), in
    chunks of :data:`MARGIN_CHUNK` pairs, so memory does not grow with the number of pairs
    times ``d``.

    Parameters
    ----------
    centroids
        torch float32 ``(k, d)``, unit-length rows.
    a, b
        torch int64 index tensors of the same shape (or one of them a Python int).
    scale
        :func:`margin_scale`.

    Returns
    -------
    torch.Tensor
        float32, the shape of ``a`` / ``b``.
    """
    import torch

    dev = centroids.device
    a_t = torch.as_tensor(a, dtype=torch.int64, device=dev)
    b_t = torch.as_tensor(b, dtype=torch.int64, device=dev)
    a_t, b_t = torch.broadcast_tensors(a_t, b_t)
    shape = a_t.shape
    a_f, b_f = a_t.reshape(-1), b_t.reshape(-1)
    gram = torch.empty(a_f.shape[0], dtype=centroids.dtype, device=dev)
    for s in range(0, a_f.shape[0], MARGIN_CHUNK):
        chunk = slice(s, s + MARGIN_CHUNK)
        gram[chunk] = (centroids[a_f[chunk]] * centroids[b_f[chunk]]).sum(dim=-1)
    gram = gram.clamp(-1.0, 1.0).reshape(shape)
    return scale * torch.sqrt(torch.clamp(2.0 - 2.0 * gram, min=0.0)) + MARGIN_SLACK


def half_margins(centroids: np.ndarray, eps: float, fraction: float = 1.0) -> np.ndarray:
    """All pair margins as a float32 ``(k, k)`` matrix, ``-inf`` on the diagonal (small k; tests)."""
    import torch

    c = torch.as_tensor(np.asarray(centroids, np.float32))
    k = c.shape[0]
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    h = pair_margins(c, i, j, margin_scale(eps, fraction)).numpy()
    np.fill_diagonal(h, -np.inf)
    return h


# Entries of one ``(labels, k)`` block of centroid margins in :func:`split_border_rows`.
LABEL_BLOCK_ENTRIES = 1 << 22


def split_border_rows(
    sims: Any, labels: Any, centroids: Any, scale: float, *, one_way: bool = False
) -> tuple[Any, Any, Any]:
    """The border rows of one block of rows: which row goes to which other cluster.

    The margins ``h_AB`` come from one matmul of the block's distinct clusters with all
    centroids (in slices of :data:`LABEL_BLOCK_ENTRIES` entries), not from a gather of two
    ``(d,)`` centroids per candidate pair: that gather cost ``d`` times more than the test.

    Parameters
    ----------
    sims
        torch float32 ``(b, k)``: similarity of each row to every centroid.
    labels
        torch int64 ``(b,)``: each row's nearest centroid (argmax of ``sims``).
    centroids
        torch float32 ``(k, d)``, unit length.
    scale
        :func:`margin_scale` (twice it with ``one_way``: the margin is then ``2 h_AB``).
    one_way
        Only hosts numbered above the row's own cluster (the one-way rule of the module
        docstring).

    Returns
    -------
    rows, hosts : torch.Tensor
        int64 ``(g,)``: row ``rows[i]`` is a border row of cluster ``hosts[i]`` (rows ascending,
        then hosts ascending).
    gaps : torch.Tensor
        float32 ``(g,)``: ``sims[row, label] - sims[row, host]`` (>= 0).
    """
    import torch

    k = centroids.shape[0]
    dev = sims.device
    uniq, inv = torch.unique(labels, return_inverse=True)
    by_label = torch.argsort(inv, stable=True)
    bounds = torch.searchsorted(inv[by_label], torch.arange(uniq.numel() + 1, device=dev)).tolist()
    step = max(1, LABEL_BLOCK_ENTRIES // max(k, 1))
    out_r, out_h, out_g = [], [], []
    for s in range(0, uniq.numel(), step):
        e = min(s + step, uniq.numel())
        gram = (centroids[uniq[s:e]] @ centroids.T).clamp(-1.0, 1.0)  # (labels, k)
        margin = scale * torch.sqrt(torch.clamp(2.0 - 2.0 * gram, min=0.0)) + MARGIN_SLACK
        margin[torch.arange(e - s, device=dev), uniq[s:e]] = -1.0  # never a border row of its own cluster
        if one_way:  # rows go only to clusters numbered above their own
            below = torch.arange(k, device=dev)[None, :] <= uniq[s:e, None]
            margin = margin.masked_fill(below, -1.0)
        rows = by_label[bounds[s] : bounds[e]]
        sub = sims[rows]
        gap = sub.gather(1, labels[rows, None]) - sub  # (r, k), >= 0
        r, h = torch_nonzero(gap <= margin[inv[rows] - s])
        out_r.append(rows[r])
        out_h.append(h)
        out_g.append(gap[r, h])
    if not out_r:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        return empty, empty, torch.empty(0, dtype=sims.dtype, device=dev)
    rows, hosts, gaps = torch.cat(out_r), torch.cat(out_h), torch.cat(out_g)
    order = torch.argsort(rows * k + hosts)
    return rows[order], hosts[order], gaps[order]


def torch_nonzero(mask: Any) -> tuple[Any, Any]:
    """Row and column indices of the True entries of a 2-D bool tensor (row-major order)."""
    idx = mask.nonzero()
    return idx[:, 0], idx[:, 1]


def duplicate_threshold(eps: float) -> float:
    """The smallest float32 ``t`` with ``float64(t) >= 1 - eps``.

    ``s >= t`` on float32 similarities then agrees with the float64 rule ``s >= 1 - eps`` that
    flags duplicates (:func:`~dask_clip.dedup.workflow.is_duplicate`).
    """
    t = np.float32(1.0 - eps)
    if float(t) < 1.0 - eps:
        t = np.nextafter(t, np.float32(2.0))
    return float(t)


# Column of a border row's sketch in the shuffle payload: its ``R + 1`` float32 values packed
# in one value per row (:func:`dask_clip.backends.pack_floats`; ``large_binary`` on pandas,
# ``list<float32>`` on cuDF), one column to shuffle instead of ``R + 1``.
SKETCH_COLUMN = "_sk"

# Slack of the sketch bound (float32 rounding of (r + 1)-dim dot products is ~1e-6).
SKETCH_SLACK = 1e-4


def sketch_dims(d: int) -> int:
    """Rank ``R`` of the sketch a border row travels with (:func:`sketch`): ``2 r``, at most ``d``.

    ``r`` (:func:`coarse_dims`) is the rank of the dense test; the second ``r`` directions only
    re-test the pairs that pass it (:func:`sketch_candidates`). Measured on the CLIP-like set
    (200k x 512, eps 0.05, 1.44 G (border row, own row) pairs): 2.9e-4 of the pairs pass at
    rank 32, 4.1e-5 at rank 64, 1.2e-5 at rank 128; each candidate carries an embedding
    (2 KiB), each border row ``R + 1`` floats.
    """
    return int(min(d, 2 * coarse_dims(d)))


def coarse_dims(d: int) -> int:
    """Rank ``r`` of the dense sketch test: ``d / 16``, at least 16, at most ``d``.

    The dense test costs nearly the same per pair at rank 16 or 32 (1.2 vs 1.5 ns, one thread:
    it writes one product per pair) but passes 20 x more of the CLIP-like set's pairs at rank
    16 (5.3e-3 against 2.7e-4 at eps 0.05), and 44 % of its border rows reach some own row there.
    """
    return int(min(d, max(16, d // 16)))


def sketch_basis(centroids: np.ndarray, dims: int | None = None) -> np.ndarray:
    """An orthonormal basis of the centroids' principal directions: float32 ``(d, R)``.

    The top ``R`` (:func:`sketch_dims`) eigenvectors of ``C^T C`` (float64), ``C`` the ``(k, d)``
    centroids, largest eigenvalue first (so the first ``r`` columns are the basis of the
    coarse sketch, :func:`coarse_sketch`): the directions in which rows differ most, so that a
    projection on them sees most of the distance between two rows. Any orthonormal basis keeps
    the bound of :func:`sketch` exact; a good one only makes it tighter.

    With ``k < d`` they come from the smaller ``(k, k)`` Gram ``C C^T`` (``v = C^T u / sqrt(l)``,
    then a QR for orthonormality), with torch's ``eigh`` on one thread: NumPy's threaded LAPACK
    took 6-9 s for ``C^T C`` at ``d = 512`` on a busy 2-core machine, one thread on the
    ``(158, 158)`` Gram 0.03 s (measured).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a (k, k) or (d, d) eigh: threads only wait on each other
    try:
        return _sketch_basis(torch.as_tensor(np.asarray(centroids, np.float64)), dims)
    finally:
        torch.set_num_threads(threads)


def _sketch_basis(c: Any, dims: int | None) -> np.ndarray:
    import torch

    k, d = c.shape
    r = sketch_dims(d) if dims is None else int(min(d, dims))
    if r <= k < d:
        values, u = torch.linalg.eigh(c @ c.T)  # ascending
        top = torch.arange(k - 1, k - 1 - r, -1)
        if values[top[-1]] > 1e-9 * max(float(values[-1]), 1e-300):  # r independent directions
            q, _ = torch.linalg.qr((c.T @ u[:, top]) / torch.sqrt(values[top]))
            return np.ascontiguousarray(q.numpy(), dtype=np.float32)
    _, vectors = torch.linalg.eigh(c.T @ c)  # ascending eigenvalues
    return np.ascontiguousarray(vectors.flip(1)[:, :r].numpy(), dtype=np.float32)


# Added to the squared residual norm of :func:`sketch` so that float32 rounding (``|x|^2 = 1``
# within ~1e-6 after normalising, ``|x Q|^2`` within ~1e-5) can only overestimate it.
RESIDUAL_SLACK = 1e-4


def sketch(x: Any, basis: Any) -> Any:
    """``[x Q, |x - x Q Q^T|]``: float32 ``(n, r + 1)``, whose dot products bound ``x_a . x_b`` above.

    With ``z = x Q`` (``Q`` orthonormal) and residuals ``e = x - z Q^T`` (orthogonal to ``Q``),
    ``x_a . x_b = z_a . z_b + e_a . e_b <= z_a . z_b + |e_a| |e_b| = s_a . s_b`` by
    Cauchy-Schwarz. So a pair whose sketches have ``s_a . s_b < t`` cannot have ``x_a . x_b >= t``:
    ``r + 1`` multiplications rule out a pair that would cost ``d``. ``|e|^2 = 1 - |z|^2``
    plus :data:`RESIDUAL_SLACK`, so rounding errs on the safe side.

    Parameters
    ----------
    x
        torch float32 ``(n, d)``, unit-length rows.
    basis
        torch float32 ``(d, r)``, orthonormal columns (:func:`sketch_basis`).
    """
    import torch

    z = x @ basis
    resid = torch.sqrt((1.0 - (z * z).sum(dim=1)).clamp(min=0.0) + RESIDUAL_SLACK)
    return torch.cat([z, resid[:, None]], dim=1)


def coarse_sketch(s: Any, r: int) -> Any:
    """The rank-``r`` sketch of rows whose rank-``R`` sketch is ``s`` (``r <= R``): float32 ``(n, r + 1)``.

    ``[z_1 .. z_r, |e_r|]`` with ``|e_r|^2 = z_{r+1}^2 + .. + z_R^2 + |e_R|^2`` (the residual
    after ``r`` directions is the rest of ``z`` plus the residual after ``R``, orthogonal): the
    same bound as :func:`sketch` with the first ``r`` columns of the basis, looser than ``s``'s
    (Cauchy-Schwarz on the dropped coordinates), so a pair ``s`` keeps is kept here too.
    ``|e_R|`` already errs upwards by :data:`RESIDUAL_SLACK`.

    Parameters
    ----------
    s
        torch float32 ``(n, R + 1)``: :func:`sketch` with an ``R``-column basis.
    r
        Leading directions kept.
    """
    import torch

    rank = s.shape[1] - 1
    if r >= rank:
        return s
    rest = torch.sqrt((s[:, r:] * s[:, r:]).sum(dim=1))
    return torch.cat([s[:, :r], rest[:, None]], dim=1)


def tile_products(guest_sketch: Any, own_sketch: Any, block_size: int) -> Iterator[tuple[int, int, Any]]:
    """The sketch products of a block, tile by tile: ``(gs, hs, guest_sketch[gs:..] @ own_sketch[hs:..].T)``.

    Tiles of up to ``block_size x block_size``, every one written into the same buffer (each
    yielded tile is a contiguous view of it, valid until the next one) instead of a fresh
    megabyte-sized allocation, which costs page faults every time. Measured, one thread: the
    dense test per pair at rank 32 (tiles of 512 x 635) 2.0 ns allocated, 1.45 ns reused; one
    partition's border step (CLIP-like eps 0.05, 24k rows, 188k border rows) median 1.36 s ->
    1.18-1.22 s over 8 interleaved runs, tiles of 512 or 1024 border rows alike.
    """
    import torch

    m, n = guest_sketch.shape[0], own_sketch.shape[0]
    space = torch.empty(min(block_size, m) * min(block_size, n), dtype=own_sketch.dtype, device=own_sketch.device)
    for gs in range(0, m, block_size):
        g = guest_sketch[gs : gs + block_size]
        for hs in range(0, n, block_size):
            o = own_sketch[hs : hs + block_size]
            yield gs, hs, torch.mm(g, o.T, out=space[: g.shape[0] * o.shape[0]].view(g.shape[0], o.shape[0]))


def sketch_candidates(
    own_sketch: Any,
    guest_sketch: Any,
    threshold: float,
    block_size: int,
    *,
    own_fine: Any = None,
    guest_fine: Any = None,
) -> tuple[Any, Any]:
    """The (border row, own row) pairs of one cluster whose sketch bound reaches ``threshold``.

    :func:`sketch` bounds every pair's similarity from above (``s_a . s_b >= a . b``), so a pair
    left out here has ``a . b < threshold - SKETCH_SLACK`` and cannot be a duplicate; the pairs
    returned are only candidates, checked exactly where both embeddings are (the border row's
    own cluster block, :func:`dask_clip.dedup.pairwise.verify_candidates`).

    Two levels: every pair is tested with ``own_sketch`` / ``guest_sketch`` (the coarse,
    rank-``r`` sketches of :func:`coarse_sketch`) in dense tiles; the pairs that pass, a few in
    ten thousand, are tested again with ``own_fine`` / ``guest_fine`` (the rank-``R`` sketches
    they came from, a tighter bound: 7 x fewer candidates on the CLIP-like set).

    Parameters
    ----------
    own_sketch, guest_sketch
        torch float32 ``(n, r + 1)``, ``(m, r + 1)``: sketches of the cluster's own rows and of
        its border rows.
    threshold
        float32 similarity from which a pair counts (:func:`duplicate_threshold`).
    block_size
        Tile side: memory is ``block_size**2`` floats.
    own_fine, guest_fine
        torch float32 ``(n, R + 1)``, ``(m, R + 1)``, or None (one level).

    Returns
    -------
    guest_idx, own_idx : torch.Tensor
        int64 ``(p,)``: indices into ``guest_sketch`` and ``own_sketch``.
    """
    import torch

    dev = own_sketch.device
    out_g: list[Any] = []
    out_o: list[Any] = []
    floor = threshold - SKETCH_SLACK
    for gs, hs, bound in tile_products(guest_sketch, own_sketch, block_size):
        # most border rows reach no own row: find the pairs only in the rows that do
        rows = torch.nonzero(bound.amax(dim=1) >= floor).flatten()
        if rows.numel() == 0:
            continue
        r, c = torch_nonzero(bound[rows] >= floor)
        out_g.append(rows[r] + gs)
        out_o.append(c + hs)
    if not out_g:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        return empty, empty
    gi, oi = torch.cat(out_g), torch.cat(out_o)
    if own_fine is not None and guest_fine is not None:
        keep = (guest_fine[gi] * own_fine[oi]).sum(dim=1) >= floor
        gi, oi = gi[keep], oi[keep]
    return gi, oi


def exact_pairs(
    own_x: Any,
    own_sketch: Any,
    guest_x: Any,
    guest_rows: Any,
    guest_sketch: Any,
    threshold: float,
    block_size: int,
) -> tuple[Any, Any, Any]:
    """The (border row, own row) pairs of one cluster with similarity ``>= threshold``, exactly.

    For border rows that travelled with their embeddings (:func:`sketch_pays_off` said no).
    In ``block_size`` tiles: the sketch bound first; a tile where many pairs pass gets one
    matmul, the others a dot product per passing pair. Memory stays one tile whatever the
    number of pairs that pass.

    Parameters
    ----------
    own_x, own_sketch
        torch float32 ``(n, d)`` unit rows of the cluster and their sketches ``(n, r + 1)``.
    guest_x
        torch float32 ``(N, d)``: the block's border rows' embeddings (normalised here, per
        tile, only where read).
    guest_rows
        int64 ``(m,)``: the cluster's border rows, positions in ``guest_x``.
    guest_sketch
        float32 ``(m, r + 1)``: their sketches.
    threshold, block_size
        As :func:`sketch_candidates`.

    Returns
    -------
    guest_idx, own_idx, similarity
        int64 / int64 / float32 ``(p,)``: indices into ``guest_rows`` and ``own_x``.
    """
    import torch

    norm = torch.nn.functional.normalize
    out: list[tuple[Any, Any, Any]] = []
    floor = threshold - SKETCH_SLACK
    for gs, hs, bound in tile_products(guest_sketch, own_sketch, block_size):
        maybe = bound >= floor
        passed = int(maybe.sum())
        if passed == 0:
            continue
        ge, he = gs + maybe.shape[0], hs + maybe.shape[1]
        if 4 * passed > maybe.numel():  # dense: one matmul, and only its hits are gathered
            sim = norm(guest_x.index_select(0, guest_rows[gs:ge]), dim=1) @ own_x[hs:he].T
            r, c = torch_nonzero(sim >= threshold)
            v = sim[r, c]
        else:
            r, c = torch_nonzero(maybe)
            v = (norm(guest_x[guest_rows[gs + r]], dim=1) * own_x[hs + c]).sum(dim=1)
            hit = v >= threshold
            r, c, v = r[hit], c[hit], v[hit]
        if r.numel():
            out.append((gs + r, hs + c, v))
    if not out:
        dev = own_x.device
        e = torch.empty(0, dtype=torch.int64, device=dev)
        return e, e, torch.empty(0, dtype=torch.float32, device=dev)
    return tuple(torch.cat([o[j] for o in out]) for j in range(3))  # type: ignore[return-value]


# Border rows ship as sketches only while the sketch bound leaves fewer candidate pairs than
# this per border row: a candidate carries one embedding, as a border row shipped whole would.
CANDIDATES_PER_BORDER_ROW = 0.5


def sketch_pays_off(estimate: float) -> bool:
    """Ship border rows as sketches (True) or with their embeddings (False), from the estimate
    of :func:`.border_estimate.candidates_per_border_row`: both ways are exact, they differ in bytes moved."""
    return estimate <= CANDIDATES_PER_BORDER_ROW
