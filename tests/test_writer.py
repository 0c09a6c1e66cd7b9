"""The resumable per-partition Parquet writer: names, atomic files, resume, readers, progress."""

from __future__ import annotations

import json
import os

import dask.dataframe as dd
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip.columns import EMBEDDING_DTYPE, embeddings_to_numpy
from dask_clip.io.writer import MANIFEST, check_output, count_nonnull, part_name, to_arrow, write_parquet

LIST_F32 = pa.list_(pa.float32())


def embedding_frame(n: int = 23, dim: int = 4, seed: int = 0) -> pd.DataFrame:
    """Like an embedder's output: string keys, a list<float32> column with nulls, an error column."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    values = [None if i % 7 == 3 else v.tolist() for i, v in enumerate(vectors)]
    return pd.DataFrame(
        {
            "key": pd.array([f"k{i:03d}" for i in range(n)], dtype=pd.ArrowDtype(pa.string())),
            "embedding": pd.array(values, dtype=EMBEDDING_DTYPE),
            "embedding_error": pd.array(
                [("bad" if v is None else None) for v in values], dtype=pd.ArrowDtype(pa.string())
            ),
            "score": rng.random(n),
        }
    )


def listed(path) -> list[str]:
    return sorted(os.listdir(path))


def test_part_names_sort_in_partition_order():
    assert part_name(7, 10) == "part-00007.parquet"
    names = [part_name(i, 123_456) for i in range(0, 123_456, 997)]
    assert (
        names == sorted(names) and names[-1] == "part-122631.parquet" and part_name(5, 123_456) == "part-000005.parquet"
    )


def test_arrow_table_reads_back_in_plain_pandas(tmp_path):
    df = embedding_frame()
    df["note"] = pd.Series([None] * len(df), dtype=object)  # all null: stored as string
    table = to_arrow(df, {"embedding": LIST_F32})
    assert table.schema.field("embedding").type == LIST_F32
    assert table.schema.field("note").type == pa.string()
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    assert {c["name"]: c["numpy_type"] for c in pandas_meta["columns"]}["embedding"] == "object"
    pq.write_table(table, tmp_path / "a.parquet")
    back = pd.read_parquet(tmp_path / "a.parquet")  # fails with pyarrow's own metadata (pandas#57411)
    assert back["embedding"].iloc[0].dtype == np.float32
    arrow_back = pd.read_parquet(tmp_path / "a.parquet", dtype_backend="pyarrow")
    assert arrow_back["embedding"].dtype.pyarrow_dtype == LIST_F32
    np.testing.assert_array_equal(embeddings_to_numpy(arrow_back["embedding"]), embeddings_to_numpy(df["embedding"]))


def test_every_reader_gets_the_rows_in_order_as_list_float32(tmp_path):
    df = embedding_frame(n=23)
    ddf = dd.from_pandas(df, npartitions=5, sort=False)
    ddf = ddf.map_partitions(
        lambda p: p.iloc[:0] if p["key"].iloc[0] == "k005" else p, meta=ddf._meta
    )  # an empty partition
    expected = ddf.compute()
    assert len(expected) < len(df)
    summary = write_parquet(ddf, tmp_path / "out", partition_stats=count_nonnull("embedding_error", "errors"))
    assert listed(tmp_path / "out") == [MANIFEST] + [part_name(i, 5) for i in range(5)]
    assert (summary.partitions, summary.written, summary.skipped) == (5, 5, 0)
    assert summary.rows == len(expected) and summary.counts == {
        "errors": int(expected["embedding_error"].notna().sum())
    }
    want = embeddings_to_numpy(expected["embedding"])

    plain = pd.read_parquet(tmp_path / "out")
    assert plain["key"].tolist() == expected["key"].tolist()
    np.testing.assert_array_equal(embeddings_to_numpy(plain["embedding"]), want)
    arrow = pd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")
    assert arrow["embedding"].dtype.pyarrow_dtype == LIST_F32
    lazy = dd.read_parquet(tmp_path / "out").compute()
    assert lazy["key"].tolist() == expected["key"].tolist()
    np.testing.assert_array_equal(embeddings_to_numpy(lazy["embedding"]), want)
    assert dd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")["embedding"].dtype.pyarrow_dtype == LIST_F32
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == LIST_F32
    assert table.column("key").to_pylist() == expected["key"].tolist()
    rows = duckdb.sql(
        f"SELECT key, embedding, typeof(embedding) AS t FROM read_parquet('{tmp_path / 'out'}/*.parquet', "
        "filename=true, file_row_number=true) ORDER BY filename, file_row_number"
    ).fetchall()
    assert [r[0] for r in rows] == expected["key"].tolist()
    assert {r[2] for r in rows} == {"FLOAT[]"}
    got = np.array([r[1] if r[1] is not None else [np.nan] * want.shape[1] for r in rows], np.float32)
    np.testing.assert_array_equal(got, want)


def test_resume_writes_only_missing_partitions_and_keeps_finished_files(tmp_path):
    ddf = dd.from_pandas(embedding_frame(n=30), npartitions=6, sort=False)
    out = tmp_path / "out"
    write_parquet(ddf, out, job={"model": "m"})
    before = {n: os.stat(out / n) for n in listed(out) if n.startswith("part-")}
    (out / part_name(2, 6)).unlink()
    (out / part_name(5, 6)).unlink()
    (out / f".{part_name(2, 6)}.deadbeef.tmp").write_bytes(b"half a file")  # left by a killed run
    assert check_output(out, 6, job={"model": "m"}) == [2, 5]

    summary = write_parquet(ddf, out, job={"model": "m"})
    assert (summary.written, summary.skipped, summary.rows) == (2, 4, 10)
    assert listed(out) == [MANIFEST] + [part_name(i, 6) for i in range(6)]  # temporary file gone
    for name in (part_name(i, 6) for i in (0, 1, 3, 4)):
        now = os.stat(out / name)
        assert (now.st_ino, now.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert pd.read_parquet(out)["key"].tolist() == ddf.compute()["key"].tolist()

    again = write_parquet(ddf, out, job={"model": "m"})
    assert (again.written, again.skipped) == (0, 6)


def test_other_jobs_output_is_refused_unless_overwrite(tmp_path):
    ddf = dd.from_pandas(embedding_frame(n=12), npartitions=3, sort=False)
    out = tmp_path / "out"
    write_parquet(ddf, out, job={"model": "a"})
    with pytest.raises(ValueError, match=r"different job \(model: 'a' there, 'b' now\).*--overwrite"):
        write_parquet(ddf, out, job={"model": "b"})
    with pytest.raises(ValueError, match="npartitions: 3 there, 4 now"):
        write_parquet(ddf.repartition(npartitions=4), out, job={"model": "a"})
    (out / "keep-me.txt").write_text("not ours")
    summary = write_parquet(ddf.repartition(npartitions=2), out, job={"model": "b"}, overwrite=True)
    assert summary.written == 2
    assert listed(out) == [MANIFEST, "keep-me.txt", part_name(0, 2), part_name(1, 2)]
    assert json.loads((out / MANIFEST).read_text())["job"] == {"model": "b"}


def test_foreign_part_files_and_file_outputs_are_refused(tmp_path):
    ddf = dd.from_pandas(embedding_frame(n=8), npartitions=2, sort=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="no _dask_clip.json"):
        write_parquet(ddf, tmp_path / "foreign")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_parquet(ddf, tmp_path / "file")


@pytest.mark.slow
def test_progress_bar_on_a_distributed_client(tmp_path, capsys):
    from distributed import Client, LocalCluster

    ddf = dd.from_pandas(embedding_frame(n=40), npartitions=8, sort=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summary = write_parquet(ddf, tmp_path / "out", client=client, progress=True)
    assert (summary.written, summary.rows) == (8, 40)
    err = capsys.readouterr().err
    assert "8/8" in err and "40 images" in err and "images/s" in err


@pytest.mark.parametrize(
    ("output", "inputs", "how"),
    [
        ("d", ["d"], "is the input"),
        ("d/out", ["d"], "lies inside the input"),
        (".", ["d/x.parquet"], "contains the input"),
        ("d/out", ["d/*.parquet"], "lies inside the input"),  # a glob: the folder it starts in
        ("d/out", ["d/{00000..00009}.tar"], "lies inside the input"),
        ("s3://b/in/out", ["s3://b/in"], "lies inside the input"),
        ("e", ["d", "link-to-e"], "is the input"),  # symlinks resolved
    ],
)
def test_outputs_overlapping_an_input_are_refused_before_anything_is_touched(
    tmp_path, monkeypatch, output, inputs, how
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "link-to-e").symlink_to(tmp_path / "e")
    with pytest.raises(ValueError, match=how):
        check_output(output, 1, job={"input": inputs})
    assert sorted(os.listdir(tmp_path)) == ["d", "e", "link-to-e"]


def test_outputs_beside_their_inputs_are_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output("out", 2, job={"input": ["in", "in2/*.parquet", "s3://b/out"]}) == [0, 1]
    assert check_output("d-out", 1, job={"input": "d"}) == [0]  # a shared name prefix is not nesting


def test_a_manifest_without_part_files_blocks_nothing(tmp_path):
    ddf = dd.from_pandas(embedding_frame(n=6), npartitions=2, sort=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"npartitions": 9, "job": {"model": "old"}, "writer": "dask_clip.writer"}))
    summary = write_parquet(ddf, out, job={"model": "new"})  # e.g. left by a run whose model failed to load
    assert summary.written == 2
    assert json.loads((out / MANIFEST).read_text())["job"] == {"model": "new"}


def test_an_output_of_the_previous_release_resumes_and_can_be_overwritten(tmp_path):
    """Its manifest, byte for byte as 0.1 wrote it (``"writer": "dask_clip.writer"``, no format
    entry): a rerun resumes it, --overwrite replaces it (the layout move renamed modules, not this)."""
    ddf = dd.from_pandas(embedding_frame(n=6), npartitions=2, sort=False)
    out = tmp_path / "out"
    write_parquet(ddf, out, job={"model": "m"})
    manifest = {"job": {"model": "m"}, "npartitions": 2, "writer": "dask_clip.writer"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out / "part-00001.parquet").unlink()
    assert write_parquet(ddf, out, job={"model": "m"}).written == 1  # resumed
    assert write_parquet(ddf, out, job={"model": "other"}, overwrite=True).written == 2
    assert pd.read_parquet(out)["key"].tolist() == embedding_frame(n=6)["key"].tolist()


def test_the_manifest_is_written_by_the_first_partition_and_not_before(tmp_path):
    from dask_clip.io.writer import write_tasks

    ddf = dd.from_pandas(embedding_frame(n=6), npartitions=3, sort=False)
    tasks = write_tasks(ddf, tmp_path / "out", job={"model": "m"})
    assert os.listdir(tmp_path / "out") == []  # prepared: nothing written before a partition is done
    tasks[1].compute()
    assert listed(tmp_path / "out") == [MANIFEST, part_name(1, 3)]
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["job"] == {"model": "m"}
