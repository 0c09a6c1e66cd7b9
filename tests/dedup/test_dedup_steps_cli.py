"""``dask-clip dedup --steps exact,phash,semantic`` on the session cluster: removal list and output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import run_main
from PIL import Image

from dask_clip.dedup.plan import dedup_steps, drop_duplicates
from dask_clip.io.file_metadata import with_file_metadata
from dask_clip.testing import encode_image


@pytest.mark.slow  # two CLI runs and the library's plan: the default tier has test_dedup_plan.py
def test_three_steps_through_the_cli_and_drop(photos, tmp_path, client):
    rng = np.random.default_rng(1)
    base = list(photos) + [rng.integers(0, 256, (48, 48, 3), np.uint8) for _ in range(5)]
    blobs = [encode_image(p, quality=90) for p in base]
    half = Image.fromarray(photos[3]).resize((photos[3].shape[1] // 2, photos[3].shape[0] // 2))
    blobs += [blobs[1], encode_image(np.asarray(half), quality=80)]  # row 10: bytes of 1; row 11: photo 3 resized
    n = len(blobs)
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    emb[7] = emb[8] + 0.005  # rows 7 and 8: near-identical embeddings only
    emb[10], emb[11] = emb[1], emb[3]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pa.table(
        {
            "key": pa.array([f"k{i:02d}" for i in range(n)]),
            "jpg": pa.array(blobs, pa.binary()),
            "embedding": pa.array(list(emb), pa.list_(pa.float32())),
        }
    )
    # as `dask-clip embed` writes them: the files name their image and key columns, so the
    # command below needs neither --image-column nor --id-column
    table = table.replace_schema_metadata(
        with_file_metadata(table.schema.metadata, {"image_column": "jpg", "key_column": "key"})
    )
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(table.slice(0, 6), src / "part-0.parquet")
    pq.write_table(table.slice(6), src / "part-1.parquet")
    out = tmp_path / "out"
    args = ("dedup", str(src), str(out), "--steps", "exact,phash,semantic")
    args += ("--n-clusters", "2", "--eps", "0.01", "--phash-k", "8")
    run_main(*args, client=client)
    removal = pd.read_parquet(out / "_dedup" / "duplicates.parquet")
    assert list(removal.columns) == ["id", "duplicate_of", "step", "similarity"]
    got = {(r.id, r.step, r.duplicate_of) for r in removal.itertuples()}
    assert ("k10", "exact", "k01") in got and ("k11", "phash", "k03") in got
    assert {r for r in got if r[1] == "semantic"} == {("k08", "semantic", "k07")} or {
        r for r in got if r[1] == "semantic"
    } == {("k07", "semantic", "k08")}
    written = pd.read_parquet(out, dtype_backend="pyarrow").set_index("key").sort_index()
    assert written["duplicate"].sum() == len(removal) == 3
    assert written.loc["k10", "dedup_step"] == "exact" and written.loc["k11", "duplicate_of"] == "k03"
    # the library gives the same removal list
    import dask.dataframe as dd

    lib, _ = dedup_steps(
        dd.read_parquet(src, dtype_backend="pyarrow"), id_column="key", image_column="jpg", k=8, eps=0.01, n_clusters=2
    )
    assert set(lib["id"]) == set(removal["id"])
    # --drop-duplicates writes the kept rows only
    run_main(*args[:2], str(tmp_path / "kept"), *args[3:], "--drop-duplicates", client=client)
    kept = pd.read_parquet(tmp_path / "kept", dtype_backend="pyarrow")
    ref = drop_duplicates(table.to_pandas(), removal, id_column="key")
    assert sorted(kept["key"]) == sorted(ref["key"]) and len(kept) == n - 3
