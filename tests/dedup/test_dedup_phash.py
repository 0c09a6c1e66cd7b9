"""Perceptual hashes against the ``imagehash`` package, and Hamming near-duplicates against brute force."""

from __future__ import annotations

import io

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from local_dask import THREADS
from PIL import Image

from dask_clip.dedup.phash import (
    dhash_pixels,
    hamming,
    image_hashes,
    phash_duplicates,
    phash_pixels,
    probe_masks,
)
from dask_clip.testing import encode_image

imagehash = pytest.importorskip("imagehash")


def reference(images: list[np.ndarray], fn) -> np.ndarray:
    return np.array([int(str(fn(Image.fromarray(im))), 16) for im in images], np.uint64)


def test_vectorised_hashes_are_bit_identical_to_imagehash(photos):
    """Photos, noise of odd sizes, flat images (DCT ties around the median) and gray ramps."""
    rng = np.random.default_rng(0)
    images = list(photos)
    images += [
        rng.integers(0, 256, (int(rng.integers(3, 200)), int(rng.integers(3, 200)), 3), np.uint8) for _ in range(60)
    ]
    images += [np.full((40, 50, 3), v, np.uint8) for v in (0, 1, 128, 255)]
    y, x = np.mgrid[0:70, 0:90]
    images += [
        np.repeat(((x * a + y * b) % 256).astype(np.uint8)[..., None], 3, axis=2) for a, b in [(1, 0), (0, 3), (2, 5)]
    ]
    np.testing.assert_array_equal(phash_pixels(images), reference(images, imagehash.phash))
    np.testing.assert_array_equal(dhash_pixels(images), reference(images, imagehash.dhash))
    assert phash_pixels([]).dtype == np.uint64 and len(phash_pixels([])) == 0


def test_hamming_matches_imagehash_difference(photos):
    a, b = phash_pixels(photos[:1] * 4), phash_pixels(photos[1:5])
    ref = [imagehash.phash(Image.fromarray(photos[0])) - imagehash.phash(Image.fromarray(p)) for p in photos[1:5]]
    assert hamming(a, b).tolist() == ref


def test_probe_masks_cover_the_radius():
    m = probe_masks(2, bits=16)
    assert len(m) == 1 + 16 + 120 and m[0] == 0 and len(set(m.tolist())) == len(m)
    assert max(bin(int(v)).count("1") for v in m) == 2


def brute_force(h: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's closest earlier row within k (input order = keep order): flags, distance, partner."""
    d = hamming(h[:, None], h[None, :]).astype(int)
    d[~valid, :] = 99
    d[:, ~valid] = 99
    d[np.triu_indices(len(h))] = 99  # only rows ranked ahead (earlier) count
    return d.min(1) <= k, d.min(1), d.argmin(1)


def planted_hashes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for s, t in zip(rng.integers(0, n, n // 5), rng.permutation(n)[: n // 5]):
        v = int(h[s])
        for f in rng.choice(64, int(rng.integers(0, 12)), replace=False):
            v ^= 1 << int(f)
        h[t] = np.uint64(v)
    return h


@pytest.mark.parametrize("k", [0, 4, 11])  # probe radius 0, 1, 2
def test_near_duplicates_equal_brute_force_on_the_cluster(dedup_client, k):
    n = 1500
    h = planted_hashes(n, seed=k)
    valid = np.ones(n, bool)
    valid[[3, 700]] = False
    df = pd.DataFrame({"id": np.arange(n) * 7, "phash": pd.array(np.where(valid, h, 0), dtype="UInt64")})
    df.loc[~valid, "phash"] = pd.NA
    out = phash_duplicates(dd.from_pandas(df, npartitions=5, sort=False), k=k, id_column="id").compute()
    dup, dist, partner = brute_force(h, valid, k)
    assert out.index.equals(df.index) and (out["id"] == df["id"]).all()
    np.testing.assert_array_equal(out["duplicate"].to_numpy(), dup)
    np.testing.assert_array_equal(out["hamming"].to_numpy(dtype=float, na_value=-1)[dup], dist[dup])
    assert out["hamming"][~dup].isna().all() and out["duplicate_of"][~dup].isna().all()
    np.testing.assert_array_equal(out["duplicate_of"][dup].to_numpy(dtype=np.int64), partner[dup] * 7)
    np.testing.assert_allclose(out["max_similarity"][dup], 1 - dist[dup] / 64)
    assert dup.sum() > 0 or k == 0


def test_random_keep_rule_flags_one_row_of_every_close_pair():
    """Whatever the order: no row without a neighbour is flagged, every pair within k has a
    flagged row, every partner is within k; and the order does not depend on partitioning."""
    n, k = 800, 6
    h = planted_hashes(n, seed=3)
    df = pd.DataFrame({"id": np.arange(n), "phash": pd.array(h, dtype="UInt64")})
    with dask.config.set(THREADS):
        rand = phash_duplicates(
            dd.from_pandas(df, npartitions=3, sort=False), k=k, id_column="id", which_to_keep="random", seed=1
        ).compute()
        again = phash_duplicates(
            dd.from_pandas(df, npartitions=7, sort=False), k=k, id_column="id", which_to_keep="random", seed=1
        ).compute()
    pd.testing.assert_frame_equal(rand, again)
    d = hamming(h[:, None], h[None, :]).astype(int)
    np.fill_diagonal(d, 99)
    flagged = rand["duplicate"].to_numpy()
    i, j = np.nonzero(np.triu(d <= k))
    assert len(i) > 50 and (flagged[i] | flagged[j]).all()
    assert not flagged[(d > k).all(axis=1)].any()
    partner = rand["duplicate_of"][flagged].to_numpy(dtype=np.int64)
    assert (d[np.flatnonzero(flagged), partner] <= k).all()
    with dask.config.set(THREADS):  # the graph is built under the settings it runs with
        first = phash_duplicates(dd.from_pandas(df, npartitions=3, sort=False), k=k, which_to_keep="first").compute()
    assert not first["duplicate"].equals(rand["duplicate"])  # another order, other rows kept


def test_image_hashes_from_parquet_on_the_cluster(dedup_client, tmp_path, photos):
    """Real Parquet of JPEG bytes -> hash columns equal imagehash of the decoded RGB; bad rows null."""
    blobs = [encode_image(p, quality=90) for p in photos] + [b"not an image", None]
    table = pa.table({"id": pa.array(range(len(blobs))), "image": pa.array(blobs, pa.binary())})
    path = tmp_path / "images.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    ddf = dd.read_parquet(path, dtype_backend="pyarrow").repartition(npartitions=2)
    out = image_hashes(ddf, kinds=("phash", "dhash")).compute()
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[:5]]
    assert out["phash"][:5].to_numpy(dtype=np.uint64).tolist() == reference(decoded, imagehash.phash).tolist()
    assert out["dhash"][:5].to_numpy(dtype=np.uint64).tolist() == reference(decoded, imagehash.dhash).tolist()
    assert out["phash"][5:].isna().all()


def test_bad_arguments():
    ddf = dd.from_pandas(pd.DataFrame({"phash": pd.array([1, 2], dtype="UInt64")}), npartitions=1)
    with pytest.raises(ValueError, match="k must be at most 15"):
        phash_duplicates(ddf, k=16)
    with pytest.raises(ValueError, match="which_to_keep"):
        phash_duplicates(ddf, which_to_keep="hard")
    with pytest.raises(ValueError, match="no column 'hash'"):
        phash_duplicates(ddf, hash_column="hash")
    with pytest.raises(ValueError, match="kinds"):
        image_hashes(dd.from_pandas(pd.DataFrame({"image": [b""]}), npartitions=1), kinds=("ahash",))
