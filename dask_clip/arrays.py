"""An embedding column as a ``dask.array``: the input that faiss, cuML and scikit-learn take.

Each partition's ``list<float32>`` column becomes one block of rows, float32 (rows, D): NumPy on
pandas partitions, CuPy on cuDF partitions (through the backend layer, :mod:`dask_clip.backends`,
zero-copy on the device where the column allows). Rows without an embedding (null, empty or
non-finite) are dropped or masked, as the caller chooses.

Chunk sizes are known (``lengths=True``, the default): one pass over the column counts each
partition's rows first, as ``dask.dataframe.Series.to_dask_array(lengths=True)`` does, so
slicing, ``.shape`` and ``rechunk`` work. That pass computes the column: read it from a written
output (``dd.read_parquet(out, columns=["embedding"])``, cheap) or ``persist()`` a frame that
embeds images, else the embeddings are computed twice.

Example (k-means with faiss on a sample, on the client; then each row's cluster, on the
workers; the centroids travel as a NumPy array, a faiss object does not pickle)::

    import dask.dataframe as dd, faiss, numpy as np
    import dask_clip

    def nearest(block, centroids):
        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(centroids)
        return index.search(np.ascontiguousarray(block), 1)[1][:, 0]

    frame = dd.read_parquet("embeddings/", columns=["embedding"], dtype_backend="pyarrow")
    x = dask_clip.embeddings_array(frame)                # float32 (N, D), chunks per partition
    kmeans = faiss.Kmeans(x.shape[1], 100, niter=20, seed=0)
    kmeans.train(x[:: max(1, x.shape[0] // 100_000)].compute())
    labels = x.map_blocks(nearest, kmeans.centroids, drop_axis=1, dtype="int64").compute()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dask.array as da
    import dask.dataframe as dd

__all__ = ["NULLS", "embeddings_array"]

NULLS = ("drop", "mask")


def _block_matrix(series: Any) -> tuple[Any, Any]:
    from .backends import embedding_matrix, on_device

    if on_device(series):
        import cupy

        x, valid = embedding_matrix(series)  # CUDA tensors
        return cupy.from_dlpack(x.contiguous()), cupy.from_dlpack(valid)
    x, valid = embedding_matrix(series, device="cpu")
    return x.numpy(), valid.numpy()


def _shape(series: Any, nulls: str) -> tuple[int, int, int]:
    """(rows in the block, rows with an embedding, D or 0)."""
    x, _ = _block_matrix(series)
    usable = int(x.shape[0])
    return (usable if nulls == "drop" else len(series)), usable, int(x.shape[1])


def _block(series: Any, nulls: str, dim: int) -> Any:
    x, valid = _block_matrix(series)
    if x.shape[0] == 0:
        x = x.reshape(0, dim)
    if nulls == "drop":
        return x
    full = np.zeros((len(valid), dim), dtype=np.float32)
    full[valid] = x
    return np.ma.masked_array(full, mask=np.repeat(~valid[:, None], dim, axis=1))


def embeddings_array(
    ddf: dd.DataFrame | dd.Series,
    column: str = "embedding",
    *,
    nulls: str = "drop",
    lengths: bool = True,
) -> da.Array:
    """An embedding column as a ``dask.array`` of float32 (rows, D), one block per partition
    (``dask.array.concatenate`` leaves out the empty ones).

    Parameters
    ----------
    ddf
        A Dask DataFrame with ``column`` (``list<float32>``, or ``fixed_size_list`` as Lance
        gives), or that column as a Dask Series; pandas or cuDF partitions.
    column
        The embedding column (``"text_embedding"`` for captions).
    nulls
        ``"drop"``: only rows with an embedding (null, empty and non-finite rows left out; the
        row numbers then no longer match the frame's). ``"mask"``: every row, a
        ``numpy.ma.MaskedArray`` whose rows without an embedding are masked (pandas partitions
        only: CuPy has no masked arrays).
    lengths
        Compute each partition's row count first (one pass over the column) so that the chunk
        sizes are known; False: row counts unknown (NaN), and only partitions up to the first
        with an embedding are computed here (for D).

    Returns
    -------
    dask.array.Array
        float32 (N, D): NumPy blocks on pandas partitions, CuPy blocks on cuDF partitions.

    Raises
    ------
    ValueError
        An unknown ``nulls``, a missing column, ``nulls="mask"`` on cuDF partitions, or
        embeddings of different widths.
    """
    import dask
    import dask.array as da
    import dask.dataframe as dd

    from .backends import on_device

    if nulls not in NULLS:
        raise ValueError(f"nulls={nulls!r}: use one of {', '.join(map(repr, NULLS))}")
    if not isinstance(ddf, dd.Series):
        if column not in ddf.columns:
            raise ValueError(f"no column {column!r}; the columns are {list(ddf.columns)}")
        series = ddf[column]
    else:
        series = ddf
    gpu = on_device(series._meta)
    if gpu and nulls == "mask":
        raise ValueError('nulls="mask" needs NumPy blocks (CuPy has no masked arrays); use nulls="drop" on cuDF')
    parts = series.to_delayed()
    shapes = dask.compute(*(dask.delayed(_shape)(p, nulls) for p in parts)) if lengths else ()
    widths = {d for _, usable, d in shapes if usable}
    if len(widths) > 1:
        raise ValueError(f"column {column!r} holds embeddings of different widths: {sorted(widths)}")
    if lengths:
        dim = widths.pop() if widths else 0
    else:
        dim = _first_width(parts)
    if gpu:
        import cupy

        meta: Any = cupy.empty((0, dim), dtype=np.float32)
    elif nulls == "mask":
        meta = np.ma.masked_array(np.empty((0, dim), dtype=np.float32))
    else:
        meta = np.empty((0, dim), dtype=np.float32)
    blocks = [
        da.from_delayed(
            dask.delayed(_block)(p, nulls, dim),
            shape=(shapes[i][0] if lengths else np.nan, dim),
            dtype=np.float32,
            meta=meta,
        )
        for i, p in enumerate(parts)
    ]
    if not blocks:
        return da.from_array(meta, chunks=(0, dim))
    return da.concatenate(blocks, axis=0)


def _first_width(parts: list[Any]) -> int:
    """D from the first partition that has an embedding (computes partitions until one does)."""
    import dask

    for p in parts:
        _, _, d = dask.compute(dask.delayed(_shape)(p, "drop"))[0]
        if d:
            return d
    return 0
