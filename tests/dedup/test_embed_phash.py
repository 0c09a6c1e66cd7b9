"""``ImageEmbedder(phash_column=...)`` / ``dask-clip embed --phash``: pHash from the embedding's own decode."""

from __future__ import annotations

import io

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import run_main
from PIL import Image

from dask_clip import ImageEmbedder
from dask_clip.testing import encode_image

imagehash = pytest.importorskip("imagehash")


def reference(blob: bytes) -> int:
    """``imagehash.phash`` of the decoded RGB image, as an unsigned 64-bit int."""
    return int(str(imagehash.phash(Image.open(io.BytesIO(blob)).convert("RGB"))), 16)


def image_table(photos: list[np.ndarray]) -> tuple[pa.Table, list[bytes | None]]:
    half = Image.fromarray(photos[2]).resize((photos[2].shape[1] // 2, photos[2].shape[0] // 2))
    blobs: list[bytes | None] = [encode_image(p, quality=90) for p in photos]
    blobs += [b"not an image", encode_image(np.asarray(half), quality=75), None]  # bad, a resized copy of 2, null
    keys = [f"k{i:02d}" for i in range(len(blobs))]
    return pa.table({"key": pa.array(keys), "jpg": pa.array(blobs, pa.binary())}), blobs


def test_embedder_hashes_equal_imagehash_on_the_cluster(client, model_dir, photos, tmp_path):
    table, blobs = image_table(photos)
    pq.write_table(table, tmp_path / "in.parquet")
    ddf = dd.read_parquet(tmp_path / "in.parquet", dtype_backend="pyarrow").repartition(npartitions=2)
    embedder = ImageEmbedder(model_dir=model_dir, image_column="jpg", phash_column="phash")
    out = client.compute(embedder(ddf)).result()
    assert out["phash"].dtype == pd.ArrowDtype(pa.uint64())
    good = [i for i, b in enumerate(blobs) if b is not None and b != b"not an image"]
    got = out["phash"].to_numpy(dtype=object)
    assert [int(got[i]) for i in good] == [reference(blobs[i]) for i in good]
    bad = [i for i in range(len(blobs)) if i not in good]
    assert out["phash"].iloc[bad].isna().all()
    assert out["embedding_error"].iloc[bad].notna().all()  # null hash, with the row's reason
    # the same embeddings as without hashing (the hash only reads the decoded pixels; batches
    # of other sizes round differently in the last bits)
    plain = ImageEmbedder(model_dir=model_dir, image_column="jpg").embed_partition(
        table.to_pandas(types_mapper=pd.ArrowDtype)
    )
    assert "phash" not in plain.columns
    for i in good:
        np.testing.assert_allclose(out["embedding"].iloc[i], plain["embedding"].iloc[i], atol=1e-6)


def test_embed_phash_cli_then_dedup_reads_the_stored_hashes(client, model_dir, photos, tmp_path):
    """embed --phash --remove-image-data: the dedup phash step can only use the stored column."""
    table, blobs = image_table(photos)
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(table, src / "00000.parquet")
    emb = tmp_path / "emb"
    run_main(
        "embed", str(src), str(emb), "--model-dir", model_dir, "--image-column", "jpg", "--phash",
        "--remove-image-data", client=client,
    )  # fmt: skip
    written = pd.read_parquet(emb, dtype_backend="pyarrow").set_index("key").sort_index()
    assert "jpg" not in written.columns
    for i, blob in enumerate(blobs):
        value = written.loc[f"k{i:02d}", "phash"]
        if blob is None or blob == b"not an image":
            assert pd.isna(value)
        else:
            assert int(value) == reference(blob)
    out = tmp_path / "dedup"
    run_main("dedup", str(emb), str(out), "--steps", "phash", "--phash-k", "8", client=client)
    removal = pd.read_parquet(out / "_dedup" / "duplicates.parquet")
    assert ("k" + f"{len(photos) + 1:02d}", "k02") in set(zip(removal["id"], removal["duplicate_of"]))
    # every flagged pair is within 8 bits by imagehash's own hashes
    for a, b in zip(removal["id"], removal["duplicate_of"]):
        ia, ib = int(a[1:]), int(b[1:])
        assert bin(reference(blobs[ia]) ^ reference(blobs[ib])).count("1") <= 8
