"""exact -> phash -> semantic in one plan, the removal list and drop_duplicates, on the real cluster."""

from __future__ import annotations

import io

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dask_clip.dedup import semantic_dedup
from dask_clip.dedup.phash import hamming, phash_pixels
from dask_clip.dedup.plan import REMOVAL_COLUMNS, dedup_steps, drop_duplicates
from dask_clip.testing import encode_image


def resized(p: np.ndarray, f: float) -> np.ndarray:
    h, w = p.shape[:2]
    return np.asarray(Image.fromarray(p).resize((int(w * f), int(h * f)), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def planted(photos, tmp_path_factory):
    """Photos, byte-identical copies, re-encodes and resizes (near copies for pHash), and
    embeddings with two planted semantic pairs among otherwise unrelated rows."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in range(6)]
    base = list(photos) + noise
    blobs = [encode_image(p, quality=90) for p in base]
    blobs += [blobs[0], blobs[6]]  # identical bytes
    blobs += [encode_image(photos[1], quality=40), encode_image(resized(photos[2], 0.5), quality=85)]
    n = len(blobs)
    emb = rng.standard_normal((n, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[8] = emb[9] + 0.01 * rng.standard_normal(32).astype(np.float32)  # two rows only embeddings call close
    emb[10] = emb[3] + 0.01 * rng.standard_normal(32).astype(np.float32)
    emb[11:13] = emb[[0, 6]]  # the exact copies embed alike too
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pa.table(
        {
            "id": pa.array(np.arange(n) + 100),
            "image": pa.array(blobs, pa.binary()),
            "embedding": pa.array(list(emb), pa.list_(pa.float32())),
        }
    )
    path = tmp_path_factory.mktemp("plan") / "in.parquet"
    pq.write_table(table, path)
    return path, blobs, emb


def test_three_steps_each_on_the_rows_kept_before(dedup_client, planted, tmp_path):
    path, blobs, emb = planted
    ddf = dd.read_parquet(path, dtype_backend="pyarrow").repartition(npartitions=3)
    kw = dict(id_column="id", k=10, eps=0.01, n_clusters=2, border_aware=True)
    removal, summary = dedup_steps(ddf, ("exact", "phash", "semantic"), checkpoint=tmp_path, **kw)
    assert list(removal.columns) == list(REMOVAL_COLUMNS)
    by_step = {s: set(removal.loc[removal.step == s, "id"]) for s in ("exact", "phash", "semantic")}
    # exact: the byte copies, naming the first occurrence
    assert by_step["exact"] == {111, 112}
    assert dict(zip(removal.id, removal.duplicate_of))[111] == 100
    # phash: brute force over imagehash-equal hashes of the rows exact kept
    left = [i for i in range(len(blobs)) if i + 100 not in by_step["exact"]]
    h = phash_pixels([np.asarray(Image.open(io.BytesIO(blobs[i])).convert("RGB")) for i in left])
    d = hamming(h[:, None], h[None, :]).astype(int)
    expect = {left[j] + 100 for j in range(len(left)) if any(d[j, i] <= 10 for i in range(j))}
    assert by_step["phash"] == expect and {113, 114} <= expect
    # semantic: the embeddings' reference on the rows both earlier steps kept
    kept = [i for i in left if i + 100 not in by_step["phash"]]
    sims = emb[kept] @ emb[kept].T
    close = {kept[j] + 100 for j in range(len(kept)) if any(sims[j, i] >= 0.99 for i in range(len(kept)) if i != j)}
    assert by_step["semantic"] and by_step["semantic"] < close  # one of each close pair is flagged
    assert summary["step"].tolist() == ["exact", "phash", "semantic"]
    assert summary["rows_in"].tolist() == [len(blobs), len(left), len(kept)]
    assert summary["duplicates"].tolist() == [len(by_step[s]) for s in ("exact", "phash", "semantic")]
    # resume: the finished steps are read back, same answer
    again, summary2 = dedup_steps(ddf, ("exact", "phash", "semantic"), checkpoint=tmp_path, **kw)
    assert summary2["resumed"].all() and summary2["rows_in"].tolist() == summary["rows_in"].tolist()
    pd.testing.assert_frame_equal(again.astype(str), removal.astype(str))
    # the join: exactly the rows not listed, in order
    kept_rows = drop_duplicates(ddf, removal, id_column="id").compute()
    assert kept_rows["id"].tolist() == [i + 100 for i in kept if i + 100 not in by_step["semantic"]]


def test_semantic_step_alone_equals_semantic_dedup(dedup_client, planted):
    path, _, _ = planted
    ddf = dd.read_parquet(path, dtype_backend="pyarrow")
    removal, _ = dedup_steps(ddf, ("semantic",), id_column="id", eps=0.01, n_clusters=2)
    ref = semantic_dedup(ddf, id_column="id", eps=0.01, n_clusters=2).compute()
    assert set(removal["id"]) == set(ref.loc[ref.duplicate, "id"])


def test_drop_duplicates_by_index_and_bad_steps():
    df = pd.DataFrame({"x": range(6)}, index=list("abcdef"))
    ddf = dd.from_pandas(df, npartitions=2)
    out = drop_duplicates(ddf, pd.DataFrame({"id": ["b", "e", "zz"]})).compute()
    assert out.index.tolist() == list("acdf")
    with pytest.raises(ValueError, match="steps must be among"):
        dedup_steps(ddf, ("fuzzy",))
    with pytest.raises(ValueError, match="named twice"):
        dedup_steps(ddf, ("exact", "exact"))
    with pytest.raises(ValueError, match="no id column"):
        drop_duplicates(ddf, pd.DataFrame({"id": [1]}), id_column="key")
