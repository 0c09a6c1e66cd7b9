"""``--output-format laion|lance``: the files the next tool reads, compared with the Parquet output
of the same job (bit-identical float32, row order, keys), read back by those tools, and resumed."""

from __future__ import annotations

import os
from pathlib import Path

import dask.dataframe as dd
import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import run_main, write_image_parquet

from dask_clip.columns import EMBEDDING_DTYPE, embeddings_to_numpy
from dask_clip.io.writers.laion import LaionFormat, read_laion, write_laion
from dask_clip.io.writers.lance import FRAGMENTS, add_embedding_columns, read_lance, write_lance
from dask_clip.io.writers.partitioned import write_format

N_SHARDS, ROWS = 3, 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_model_dir, client):
    """One job (captions too) written by the CLI as Parquet, LAION (float32) and Lance."""
    folder = tmp_path_factory.mktemp("formats")
    shards = write_image_parquet(folder / "shards", N_SHARDS, ROWS, bad_every=4)
    base = ["embed", str(shards), "--model-dir", text_model_dir, "--text-column", "caption"]
    out = {}
    for name, extra in {
        "parquet": [],
        "laion": ["--output-format", "laion", "--embedding-dtype", "float32"],
        "lance": ["--output-format", "lance"],
    }.items():
        out[name] = folder / name
        out[name + "_proc"] = run_main(*base[:2], str(out[name]), *base[2:], *extra, client=client)
    out["base"] = base
    out["reference"] = pd.read_parquet(out["parquet"], dtype_backend="pyarrow")
    return out


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def test_laion_files_are_the_parquet_rows_with_an_embedding_in_order(runs):
    ref = runs["reference"]
    out = runs["laion"]
    image, text = embeddings_to_numpy(ref["embedding"]), embeddings_to_numpy(ref["text_embedding"])
    valid = ~np.isnan(image).any(axis=1) & ~np.isnan(text).any(axis=1)
    assert 0 < valid.sum() < len(ref)  # broken images and empty captions were there to drop
    names = sorted(os.listdir(out / "img_emb"))
    assert names == [f"img_emb_{i}.npy" for i in range(N_SHARDS)]
    assert sorted(os.listdir(out / "metadata")) == [f"metadata_{i}.parquet" for i in range(N_SHARDS)]
    assert sorted(os.listdir(out / "text_emb")) == [f"text_emb_{i}.npy" for i in range(N_SHARDS)]
    parts = [np.load(out / "img_emb" / n) for n in names]
    texts = [np.load(out / "text_emb" / f"text_emb_{i}.npy") for i in range(N_SHARDS)]
    metas = [pq.read_table(out / "metadata" / f"metadata_{i}.parquet") for i in range(N_SHARDS)]
    for x, t, m in zip(parts, texts, metas, strict=True):
        assert x.dtype == np.float32 and x.shape == (m.num_rows, 32) and t.shape == x.shape
        assert "jpg" not in m.column_names and "embedding" not in m.column_names
        assert "caption" in m.column_names and "key" in m.column_names
    assert np.array_equal(bits(np.concatenate(parts)), bits(image[valid]))
    assert np.array_equal(bits(np.concatenate(texts)), bits(text[valid]))
    keys = [k for m in metas for k in m.column("key").to_pylist()]
    assert keys == ref["key"][valid].tolist()
    assert "wrote 3 partitions" in runs["laion_proc"].stdout
    back = read_laion(out).compute()
    assert back["key"].tolist() == keys
    assert np.array_equal(bits(embeddings_to_numpy(back["embedding"])), bits(image[valid]))


def test_laion_reads_back_with_embedding_reader_and_autofaiss_builds_an_index(runs, tmp_path):
    """The tools themselves (installed with --no-deps: their pins would downgrade pandas and NumPy)."""
    embedding_reader = pytest.importorskip("embedding_reader")
    autofaiss = pytest.importorskip("autofaiss")
    out = runs["laion"]
    expected = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in range(N_SHARDS)])
    keys = [
        k for i in range(N_SHARDS) for k in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["key"].to_pylist()
    ]
    reader = embedding_reader.EmbeddingReader(
        str(out / "img_emb"), file_format="parquet_npy", metadata_folder=str(out / "metadata"), meta_columns=["key"]
    )
    assert (reader.count, reader.dimension) == expected.shape
    got, got_keys = [], []
    for batch, meta in reader(batch_size=4, start=0, end=reader.count, show_progress=False):
        got.append(batch)
        got_keys += meta["key"].tolist()
    assert np.array_equal(bits(np.concatenate(got)), bits(expected)) and got_keys == keys
    index, _ = autofaiss.build_index(
        embeddings=str(out / "img_emb"),
        save_on_disk=False,
        index_key="Flat",
        metric_type="ip",
        max_index_memory_usage="64MB",
        current_memory_available="512MB",
        verbose=40,
    )
    assert index.ntotal == len(expected)
    scores, nearest = index.search(expected, 1)
    # each unit vector finds itself (or its planted byte-identical duplicate): inner product 1
    assert np.array_equal(expected[nearest[:, 0]], expected)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_laion_float16_is_the_float32_embedding_rounded(runs, tmp_path, client):
    frame = dd.read_parquet(runs["parquet"], dtype_backend="pyarrow")
    summary = write_laion(frame, tmp_path / "half", drop_columns=("jpg",))
    assert summary.written == N_SHARDS and summary.counts["dropped"] > 0
    half = np.concatenate([np.load(tmp_path / "half" / "img_emb" / f"img_emb_{i}.npy") for i in range(N_SHARDS)])
    full = np.concatenate([np.load(runs["laion"] / "img_emb" / f"img_emb_{i}.npy") for i in range(N_SHARDS)])
    assert half.dtype == np.float16 and np.array_equal(half, full.astype(np.float16))


def test_laion_names_sort_in_partition_order_and_empty_partitions_keep_the_width(tmp_path, client):
    n = 12
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    df = pd.DataFrame(
        {
            "key": [f"r{i}" for i in range(40)],
            "embedding": pd.array([v.tolist() for v in vectors], dtype=EMBEDDING_DTYPE),
        }
    )
    ddf = dd.from_pandas(df, npartitions=4).repartition(npartitions=n)
    ddf = dd.concat([ddf, dd.from_pandas(df.iloc[:0], npartitions=1)])  # an empty last partition
    n = ddf.npartitions
    write_laion(ddf, tmp_path / "o", dtype="float32", dim=8)
    names = sorted(os.listdir(tmp_path / "o" / "img_emb"))
    assert names == [f"img_emb_{i:02d}.npy" for i in range(n)]
    assert np.load(tmp_path / "o" / "img_emb" / names[-1]).shape == (0, 8)
    back = read_laion(tmp_path / "o").compute()
    assert back["key"].tolist() == df["key"].tolist()
    assert np.array_equal(bits(embeddings_to_numpy(back["embedding"])), bits(vectors))
    assert not (tmp_path / "o" / "text_emb").exists()  # no captions: no text_emb/


def test_lance_dataset_is_the_parquet_output_one_fragment_per_partition(runs):
    ref = runs["reference"]
    ds = lance.dataset(str(runs["lance"]))
    assert len(ds.get_fragments()) == N_SHARDS
    assert ds.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert ds.schema.field("text_embedding").type == pa.list_(pa.float32(), 32)
    table = ds.to_table()
    assert table.column("key").to_pylist() == ref["key"].tolist()
    for column in ("embedding", "text_embedding"):
        got, want = table.column(column), ref[column]
        assert got.is_null().to_pylist() == want.isna().tolist()
        valid = want.notna().to_numpy()
        x = got.combine_chunks().flatten().to_numpy().reshape(-1, 32)  # flatten() skips null rows
        assert np.array_equal(bits(x), bits(embeddings_to_numpy(want)[valid]))
    assert table.column("jpg").to_pylist() == pa.array(ref["jpg"]).to_pylist()
    assert read_lance(runs["lance"]).compute()["key"].tolist() == ref["key"].tolist()


def test_a_finished_output_is_not_written_again(runs, client):
    version = lance.dataset(str(runs["lance"])).version
    before = {p: p.stat().st_mtime_ns for p in runs["laion"].rglob("*")}
    for name in ("laion", "lance"):
        extra = ["--output-format", name] + (["--embedding-dtype", "float32"] if name == "laion" else [])
        again = run_main(*runs["base"][:2], str(runs[name]), *runs["base"][2:], *extra, client=client)
        assert "nothing to do" in again.stdout
    assert lance.dataset(str(runs["lance"])).version == version
    assert {p: p.stat().st_mtime_ns for p in runs["laion"].rglob("*")} == before


def test_another_format_or_dtype_into_the_same_folder_is_refused(runs, client):
    base = runs["base"]
    other = run_main(*base[:2], str(runs["laion"]), *base[2:], "--output-format", "laion", client=client, check=False)
    assert other.returncode != 0 and "dtype: 'float32' there, 'float16' now" in other.stderr
    mixed = run_main(*base[:2], str(runs["parquet"]), *base[2:], "--output-format", "lance", client=client, check=False)
    assert mixed.returncode != 0 and "in format 'parquet', not 'lance'" in mixed.stderr


# -- resume after an interrupted write ------------------------------------------------------------


def _failing_once(df: pd.DataFrame, flag: str, bad: int, partition_info=None) -> pd.DataFrame:
    """Raise in partition ``bad`` while the file ``flag`` exists: an interrupted run."""
    if partition_info is not None and partition_info["number"] == bad and os.path.exists(flag):
        raise RuntimeError("interrupted")
    return df


def _frame(n: int = 60, parts: int = 6) -> tuple[pd.DataFrame, dd.DataFrame]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    values = [None if i % 9 == 4 else v.tolist() for i, v in enumerate(vectors)]
    df = pd.DataFrame(
        {
            "key": pd.array([f"k{i:03d}" for i in range(n)], dtype="string[pyarrow]"),
            "embedding": pd.array(values, dtype=EMBEDDING_DTYPE),
        }
    )
    return df, dd.from_pandas(df, npartitions=parts)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _wait_until_no_task_runs(client, timeout: float = 30) -> None:
    """Until no worker executes a task: the failed write's cancelled futures do not stop tasks
    that were already running, and those still write their partition."""
    import time

    end = time.monotonic() + timeout
    while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        assert time.monotonic() < end, "tasks still running"
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["laion", "lance"])
def test_an_interrupted_write_resumes_and_keeps_what_was_committed(name, tmp_path, client):
    df, ddf = _frame()
    flag = tmp_path / "fail"
    flag.write_text("")
    bad = 3
    broken = ddf.map_partitions(_failing_once, str(flag), bad, meta=ddf._meta)
    write = write_laion if name == "laion" else write_lance
    kwargs = {"dtype": "float32"} if name == "laion" else {}
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        write(broken, out, job={"run": 1}, **kwargs)
    _wait_until_no_task_runs(client)  # partitions already running when the failure came still commit
    first = _snapshot(out)
    if name == "lance":
        markers = sorted(os.listdir(out / FRAGMENTS))
        assert f"part-{bad:05d}.json" not in markers
        with pytest.raises(ValueError):
            lance.dataset(str(out))  # no version: readers never see a part of the output
        done = len(markers)
    else:
        done = len(os.listdir(out / "img_emb"))
        assert f"img_emb_{bad}.npy" not in os.listdir(out / "img_emb")
    flag.unlink()
    # the rerun: the same rows and job (not the same graph keys, which the scheduler may still
    # hold as erred from the first run for a moment)
    summary = write(ddf, out, job={"run": 1}, **kwargs)
    assert summary.written == ddf.npartitions - done and summary.skipped == done
    after = _snapshot(out)
    kept = {k: v for k, v in first.items() if k in after and not k.startswith(".") and "/." not in k}
    assert all(after[k] == v for k, v in kept.items() if not k.endswith("_dask_clip.json"))
    back = (read_laion(out) if name == "laion" else read_lance(out)).compute()
    valid = df["embedding"].notna() if name == "laion" else pd.Series(True, index=df.index)
    assert back["key"].tolist() == df["key"][valid].tolist()
    # null rows (Lance keeps them) are NaN on both sides, with the same bits
    want = embeddings_to_numpy(df["embedding"])[valid.to_numpy()]
    assert np.array_equal(bits(embeddings_to_numpy(back["embedding"])), bits(want))


# -- embeddings added to a Lance dataset of images -------------------------------------------------


def test_add_embedding_columns_to_a_lance_dataset_of_images(tmp_path, model_dir, photo_jpegs, client):
    from dask_clip import ImageEmbedder

    images = [*photo_jpegs, b"not an image"]
    uri = str(tmp_path / "images.lance")
    lance.write_dataset(
        pa.table({"key": [f"k{i}" for i in range(len(images))], "image": pa.array(images, pa.binary())}),
        uri,
        max_rows_per_file=2,
    )
    before = lance.dataset(uri)
    image_files = [[d.path for d in f.metadata.files] for f in before.get_fragments()]
    embedder = ImageEmbedder(model_dir=model_dir, image_column="image", device="cpu")
    after = add_embedding_columns(uri, embedder, client=client)
    assert after.version == before.version + 1
    # the image data files are still those of each fragment: nothing was rewritten
    assert [
        [d.path for d in f.metadata.files][: len(old)]
        for f, old in zip(after.get_fragments(), image_files, strict=True)
    ] == image_files
    table = after.to_table()
    assert table.column("image").to_pylist() == images
    assert after.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    expected = embedder.embed_partition(pd.DataFrame({"image": pd.array(images, dtype=pd.ArrowDtype(pa.binary()))}))
    want = embeddings_to_numpy(expected["embedding"])
    got = table.column("embedding")
    assert got.is_null().to_pylist() == [False] * len(photo_jpegs) + [True]
    x = got.combine_chunks().flatten().to_numpy().reshape(-1, 32)
    np.testing.assert_allclose(x, want[: len(photo_jpegs)], rtol=0, atol=1e-6)
    assert table.column("embedding_error").to_pylist()[-1]
    with pytest.raises(ValueError, match="already has the columns"):
        add_embedding_columns(uri, embedder, client=client)


def test_write_format_runs_any_partition_format(tmp_path, client):
    """The interface the writer registry will take: a format object and the shared driver."""
    df, ddf = _frame(20, 2)
    summary = write_format(ddf, tmp_path / "o", LaionFormat(text_column=None, dtype="float32"))
    assert summary.written == 2 and summary.counts["dropped"] == int(df["embedding"].isna().sum())


# -- index, dedup and filter read every format ------------------------------------------------------


def test_index_from_laion_and_lance_outputs_finds_what_the_parquet_one_finds(runs, tmp_path, client):
    from dask_clip.index.search import load

    ref = runs["reference"]
    queries = embeddings_to_numpy(ref["embedding"])
    queries = queries[~np.isnan(queries).any(axis=1)]
    found = {}
    for name in ("parquet", "laion", "lance"):
        run_main("index", str(runs[name]), str(tmp_path / name), client=client)
        hits = load(tmp_path / name).search(queries, k=3)
        found[name] = hits[["query", "rank", "key", "similarity"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(found["lance"], found["parquet"])
    # the LAION layout holds only rows with both embeddings: the parquet hits among those rows
    laion_keys = set(read_laion(runs["laion"])["key"].compute())
    assert set(found["laion"]["key"]) <= laion_keys
    top = found["laion"][found["laion"]["rank"] == found["laion"]["rank"].min()]
    assert np.allclose(top["similarity"], 1.0, atol=1e-5) or set(top["key"]) <= laion_keys


def test_dedup_and_filter_of_a_lance_output_equal_those_of_the_parquet_output(runs, tmp_path, client):
    out = {}
    for name in ("parquet", "lance"):
        run_main("dedup", str(runs[name]), str(tmp_path / f"dedup-{name}"), "--eps", "0.01", client=client)
        out[name] = pd.read_parquet(tmp_path / f"dedup-{name}", dtype_backend="pyarrow")
    keep = [c for c in out["parquet"].columns if c not in ("jpg", "embedding", "text_embedding")]
    assert len(out["parquet"]) == len(runs["reference"])
    pd.testing.assert_frame_equal(
        out["lance"][keep].reset_index(drop=True), out["parquet"][keep].reset_index(drop=True), check_dtype=False
    )


def test_an_interrupted_laion_output_is_refused_with_what_to_do(runs, tmp_path, client):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs["laion"], broken)
    (broken / "img_emb" / "img_emb_1.npy").unlink()  # as a killed run leaves it
    proc = run_main("index", str(broken), str(tmp_path / "idx"), client=client, check=False)
    assert proc.returncode != 0 and "incomplete" in proc.stderr and "dask-clip embed" in proc.stderr
