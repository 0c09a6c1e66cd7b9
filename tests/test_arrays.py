"""``dask_clip.embeddings_array``: an embedding column as a dask.array with known chunks, fed to faiss."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dask_clip
from dask_clip.columns import EMBEDDING_DTYPE
from dask_clip.io.writer import write_parquet


def frame(n: int = 50, dim: int = 8, parts: int = 5) -> tuple[np.ndarray, np.ndarray, dd.DataFrame]:
    """Embeddings with null rows (every 6th) and an all-null partition (rows 40-49)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    valid = np.array([i % 6 != 1 and i < 40 for i in range(n)])
    values = [v.tolist() if ok else None for v, ok in zip(x, valid, strict=True)]
    df = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "embedding": pd.array(values, dtype=EMBEDDING_DTYPE)})
    return x, valid, dd.from_pandas(df, npartitions=parts, sort=False)


def test_drop_gives_the_rows_with_an_embedding_in_order_with_known_chunks(tmp_path, client):
    x, valid, ddf = frame()
    write_parquet(ddf, tmp_path / "out")  # as users read it: a written output, on the cluster
    read = dd.read_parquet(tmp_path / "out", columns=["embedding"], dtype_backend="pyarrow")
    arr = dask_clip.embeddings_array(read)
    per_part = read["embedding"].map_partitions(lambda s: s.notna().sum()).compute().tolist()
    assert per_part[-1] == 0  # the all-null partition: no block (dask drops empty blocks)
    assert arr.chunks == (tuple(c for c in per_part if c), (8,)) and arr.dtype == np.float32
    got = arr.compute()
    assert isinstance(got, np.ndarray) and np.array_equal(got, x[valid])
    assert np.array_equal(arr[3:7].compute(), x[valid][3:7])  # slicing needs the known chunks


def test_mask_keeps_every_row_and_masks_those_without(client):
    x, valid, ddf = frame()
    arr = dask_clip.embeddings_array(ddf, nulls="mask")
    assert arr.chunks == ((10,) * 5, (8,))
    got = arr.compute()
    assert isinstance(got, np.ma.MaskedArray)
    assert np.array_equal(got.mask.any(axis=1), ~valid)
    assert np.array_equal(got.data[valid], x[valid])


def test_unknown_lengths_and_bad_arguments(client):
    x, valid, ddf = frame()
    arr = dask_clip.embeddings_array(ddf, lengths=False)
    assert np.isnan(arr.shape[0]) and arr.shape[1] == 8
    assert np.array_equal(arr.compute(), x[valid])
    with pytest.raises(ValueError, match="nulls='keep': use one of 'drop', 'mask'"):
        dask_clip.embeddings_array(ddf, nulls="keep")
    with pytest.raises(ValueError, match="no column 'vector'"):
        dask_clip.embeddings_array(ddf, "vector")
    assert np.array_equal(dask_clip.embeddings_array(ddf["embedding"]).compute(), x[valid])


def nearest(block: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The docs' example: each row's nearest centroid, with faiss, on a worker."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index.search(np.ascontiguousarray(block), 1)[1][:, 0]


def test_faiss_kmeans_on_the_array_assigns_every_row_its_nearest_centroid(client):
    faiss = pytest.importorskip("faiss")
    _, _, ddf = frame(400, 16, 4)
    arr = dask_clip.embeddings_array(ddf)
    kmeans = faiss.Kmeans(arr.shape[1], 4, niter=10, seed=0)
    kmeans.train(arr.compute())
    labels = arr.map_blocks(nearest, kmeans.centroids, drop_axis=1, dtype="int64").compute()
    data = arr.compute()
    brute = ((data[:, None, :] - kmeans.centroids[None]) ** 2).sum(-1).argmin(1)
    assert len(labels) == arr.shape[0] and np.array_equal(labels, brute)
