"""Building on a real distributed cluster, and searching what was built, against brute force."""

from __future__ import annotations

import json
import os
import shutil

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from conftest import brute_force

from dask_clip.index import IndexNotFoundError, build, load
from dask_clip.io.writer import write_parquet
from dask_clip.testing import clustered_embeddings, embedding_array


def frame(x: np.ndarray, valid: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Rows with a key, a caption, a score, image bytes and the embedding (null where not valid)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "key": [f"row-{i:05d}" for i in range(n)],
            "caption": [f"caption {i}" for i in range(n)],
            "aesthetic": rng.uniform(0, 10, n),
        }
    )
    from dask_clip.backends import as_binary

    df["jpg"] = as_binary(pd.Series([b"\xff\xd8 not really %d" % i for i in range(n)]))
    df["embedding"] = embedding_array(x[valid], valid)
    return df


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """2,000 clustered 32-d rows; 60 null embeddings, one all-zero, one with a NaN."""
    x = clustered_embeddings(2000, 32, clusters=40, seed=1)
    valid = np.ones(len(x), bool)
    valid[np.random.default_rng(2).choice(len(x), 60, replace=False)] = False
    x[~valid] = np.nan
    x[10] = 0.0  # all zero: no direction, skipped as invalid
    x[11, 3] = np.nan  # not finite: skipped as invalid
    return x, valid


@pytest.fixture(scope="module")
def embeddings_folder(tmp_path_factory, data, client) -> str:
    x, valid = data
    folder = tmp_path_factory.mktemp("emb") / "embeddings"
    write_parquet(dd.from_pandas(frame(x, valid), npartitions=5), folder, client=client)
    return str(folder)


def near(x: np.ndarray, n: int, seed: int, scale: float = 0.05) -> np.ndarray:
    """n queries: rows of x with an embedding, moved by a little noise."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(np.flatnonzero(usable(x)), n, replace=False)
    return (x[rows] + rng.normal(0, scale, (n, x.shape[1]))).astype(np.float32)


def usable(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    return np.isfinite(norms) & (norms > 0)


def test_flat_from_folder_equals_brute_force(tmp_path, data, embeddings_folder, client):
    x, valid = data
    summary = build(embeddings_folder, tmp_path / "idx", client=client)
    assert summary.index_key == "Flat"
    assert summary.rows == 2000
    assert summary.null_embeddings == 60
    assert summary.invalid_embeddings == 2
    assert summary.vectors == int(usable(x).sum()) == 1938
    assert summary.partitions == 5 and summary.added == 5

    index = load(tmp_path / "idx")
    queries = near(x, 25, seed=5)
    got = index.search(queries, k=10)
    sims, rows = brute_force(x, queries, 10)
    assert list(got.columns[:3]) == ["query", "rank", "similarity"]
    assert got["rank"].tolist() == list(range(1, 11)) * 25
    # the source rows come back in the exact order, with their own key and metadata
    np.testing.assert_array_equal(got["source_row"].to_numpy().reshape(25, 10), rows)
    np.testing.assert_allclose(got["similarity"].to_numpy().reshape(25, 10), sims, atol=2e-6)
    source = frame(x, valid)
    assert got["key"].tolist() == source["key"].iloc[rows.ravel()].tolist()
    assert got["caption"].tolist() == source["caption"].iloc[rows.ravel()].tolist()
    np.testing.assert_allclose(got["aesthetic"], source["aesthetic"].iloc[rows.ravel()])
    # ids say where the row was: partition and row in partition (400 rows per partition)
    np.testing.assert_array_equal(got["partition"] * 400 + got["partition_row"], got["source_row"])
    assert "embedding" not in got.columns and "jpg" not in got.columns  # bytes only when asked

    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["counts"] == {"rows": 2000, "vectors": 1938, "null_embeddings": 60, "invalid_embeddings": 2}
    assert manifest["partition_rows"] == [400] * 5
    assert manifest["source"] == os.path.abspath(embeddings_folder)
    assert not (tmp_path / "idx" / "_build").exists()


def test_ivf_from_dask_dataframe_recall_and_full_scan(tmp_path, data, client):
    x, valid = data
    ddf = dd.from_pandas(frame(x, valid), npartitions=4)
    summary = build(ddf, tmp_path / "idx", index_key="IVF16,Flat", client=client, seed=3)
    assert (summary.index_key, summary.vectors) == ("IVF16,Flat", 1938)
    assert 1 <= summary.nprobe <= 16
    index = load(tmp_path / "idx")
    queries = near(x, 200, seed=6, scale=0.1)
    sims, rows = brute_force(x, queries, 10)

    got = index.search(queries, k=10)  # default nprobe: tuned at build time
    found = got["source_row"].to_numpy().reshape(200, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, rows)])
    assert recall >= 0.9, recall

    everything = index.search(queries, k=10, nprobe=16)  # all lists: exact
    np.testing.assert_array_equal(everything["source_row"].to_numpy().reshape(200, 10), rows)
    np.testing.assert_allclose(everything["similarity"].to_numpy().reshape(200, 10), sims, atol=2e-6)
    few = index.search(queries, k=10, nprobe=1)
    recall_1 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few["source_row"].to_numpy().reshape(200, 10), rows)])
    assert recall_1 < recall  # nprobe really reaches faiss


@pytest.mark.slow  # 20,000 x 1,024 vectors: the auto rule needs more than 2**24 floats
def test_auto_chooses_ivf_for_larger_sets_and_on_disk_lists_match(tmp_path, client):
    # 20,000 x 1,024 floats > 2**24: the auto rule leaves exact search for IVF
    x = clustered_embeddings(20_000, 1024, clusters=100, seed=4)
    ddf = dd.from_pandas(frame(x, np.ones(len(x), bool)), npartitions=4)
    summary = build(ddf, tmp_path / "mem", client=client)
    assert summary.index_key == "IVF512,Flat"
    # nprobe tuned on sampled rows: the smallest power of two reaching recall@10 >= 0.97
    recalls = {int(k): v for k, v in summary.tuning["recall_at_10"].items()}
    assert recalls[summary.nprobe] >= 0.97 and all(v < 0.97 for p, v in recalls.items() if p < summary.nprobe)
    assert summary.train_rows == 20_000
    on_disk = build(ddf, tmp_path / "disk", index_key="IVF512,Flat", on_disk=True, client=client)
    assert on_disk.on_disk
    version = json.loads((tmp_path / "disk" / "index.json").read_text())["version"]
    assert (tmp_path / "disk" / version / "index.ivfdata").stat().st_size >= 20_000 * 1024 * 4

    assert on_disk.nprobe == summary.nprobe  # same seed, same training, same tuning
    queries = near(x, 50, seed=8, scale=0.02)
    in_memory = load(tmp_path / "mem").search(queries, k=10)
    # a moved folder still finds its lists (IO_FLAG_ONDISK_SAME_DIR)
    shutil.move(tmp_path / "disk", tmp_path / "moved")
    from_disk = load(tmp_path / "moved").search(queries, k=10)
    pd.testing.assert_frame_equal(in_memory, from_disk)
    _, rows = brute_force(x, queries, 10)
    recall = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(from_disk["source_row"].to_numpy().reshape(50, 10), rows)]
    )
    assert recall >= 0.95, recall


def test_partitioning_does_not_change_results(tmp_path, data, client, capsys):
    x, valid = data
    results = []
    for npartitions in (1, 7):
        ddf = dd.from_pandas(frame(x, valid), npartitions=npartitions)
        build(ddf, tmp_path / f"p{npartitions}", client=client, progress=True)
        assert f"{npartitions}/{npartitions}" in capsys.readouterr().err  # the progress bar saw every partition
        results.append(load(tmp_path / f"p{npartitions}").search(near(x, 10, seed=9), k=5))
    pd.testing.assert_series_equal(results[0]["key"], results[1]["key"])
    pd.testing.assert_series_equal(results[0]["source_row"], results[1]["source_row"])
    np.testing.assert_allclose(results[0]["similarity"], results[1]["similarity"], atol=1e-6)


def test_filters_on_a_score_column(tmp_path, data, embeddings_folder, client):
    x, valid = data
    build(embeddings_folder, tmp_path / "idx", client=client)
    index = load(tmp_path / "idx")
    scores = frame(x, valid)["aesthetic"].to_numpy()
    queries = near(x, 5, seed=7)

    got = index.search(queries, k=10, filters=[("aesthetic", ">=", 7.5)])
    assert (got["aesthetic"] >= 7.5).all()
    masked = np.where((scores >= 7.5)[:, None], x, np.nan)
    _, rows = brute_force(masked, queries, 10)
    np.testing.assert_array_equal(got["source_row"].to_numpy().reshape(5, 10), rows)

    either = index.search(queries, k=10, filters=[[("aesthetic", "<", 1.0)], [("aesthetic", ">", 9.0)]])
    assert ((either["aesthetic"] < 1.0) | (either["aesthetic"] > 9.0)).all() and len(either) == 50

    nothing = index.search(queries, k=10, filters=[("aesthetic", ">", 100)])
    assert nothing.empty and list(nothing.columns[:3]) == ["query", "rank", "similarity"]
    with pytest.raises(ValueError, match="nonexistent"):
        index.search(queries, k=10, filters=[("nonexistent", ">", 1)])


def test_search_like_by_key(tmp_path, data, embeddings_folder, client):
    x, valid = data
    build(embeddings_folder, tmp_path / "idx", client=client)
    index = load(tmp_path / "idx")
    like = index.search_like(["row-00042", "row-01999"], k=5)
    direct = index.search(x[[42, 1999]], k=5)
    pd.testing.assert_frame_equal(like, direct)
    assert like.groupby("query")["key"].first().tolist() == ["row-00042", "row-01999"]
    np.testing.assert_allclose(like.groupby("query")["similarity"].first(), 1.0, atol=1e-5)
    null_key = f"row-{int(np.flatnonzero(~valid)[0]):05d}"
    with pytest.raises(KeyError, match=null_key):
        index.search_like(null_key)


def test_integer_keys_found_from_strings(tmp_path, data, client):
    x, valid = data
    df = frame(x, valid).assign(key=lambda d: np.arange(len(d)) * 10)
    build(dd.from_pandas(df, npartitions=3), tmp_path / "idx", client=client)
    index = load(tmp_path / "idx")
    pd.testing.assert_frame_equal(index.search_like("420", k=3), index.search_like(420, k=3))
    assert index.search_like("420", k=1)["source_row"].tolist() == [42]


def test_refuses_bad_requests_before_any_work(tmp_path, data, embeddings_folder, client):
    x, valid = data
    with pytest.raises(ValueError, match="index_key"):
        build(embeddings_folder, tmp_path / "a", index_key="HNSW32")
    with pytest.raises(ValueError, match="embedding_column"):
        build(embeddings_folder, tmp_path / "a", embedding_column="emb")
    with pytest.raises(ValueError, match="clash"):
        build(dd.from_pandas(frame(x, valid).rename(columns={"caption": "rank"}), npartitions=2), tmp_path / "a")
    with pytest.raises(ValueError, match="local"):
        build(embeddings_folder, "s3://bucket/index")
    with pytest.raises(ValueError, match="max_memory"):
        build(embeddings_folder, tmp_path / "a", max_memory="lots")
    with pytest.raises(IndexNotFoundError):
        load(tmp_path / "a")
    empty = frame(x[:20], np.zeros(20, bool))
    with pytest.raises(ValueError, match="no row"):
        build(dd.from_pandas(empty, npartitions=2), tmp_path / "b", client=client)
    build(embeddings_folder, tmp_path / "c", client=client)
    with pytest.raises(FileExistsError, match="overwrite"):
        build(embeddings_folder, tmp_path / "c", client=client)
    with pytest.raises(ValueError, match="dims|shape"):
        load(tmp_path / "c").search(np.ones((2, 31), np.float32))


def test_partitions_of_different_dimensions_are_refused(tmp_path, client):
    a = pd.DataFrame({"embedding": embedding_array(np.ones((4, 8), np.float32), np.ones(4, bool))})
    b = pd.DataFrame({"embedding": embedding_array(np.ones((4, 9), np.float32), np.ones(4, bool))})
    ddf = dd.concat([dd.from_pandas(a, npartitions=1), dd.from_pandas(b, npartitions=1)])
    with pytest.raises(ValueError, match="different lengths|9-d"):
        build(ddf, tmp_path / "idx", client=client)


@pytest.mark.parametrize("index_key", ["IVF16,SQ8", "IVF16,PQ8"])
def test_compressed_codes_on_disk(tmp_path, data, client, index_key):
    x, valid = data
    ddf = dd.from_pandas(frame(x, valid), npartitions=3)
    summary = build(ddf, tmp_path / "idx", index_key=index_key, on_disk=True, client=client)
    assert summary.on_disk and summary.vectors == 1938
    index = load(tmp_path / "idx")
    got = index.search_like(["row-00042", "row-00500"], k=10, nprobe=16)
    assert got.groupby("query")["key"].first().tolist() == ["row-00042", "row-00500"]
    _, rows = brute_force(x, x[[42, 500]], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got["source_row"].to_numpy().reshape(2, 10), rows)])
    assert recall >= (0.9 if index_key.endswith("SQ8") else 0.5), recall  # codes approximate the vectors
