"""``dask-clip`` as users run it: resumable output, real Parquet, a real cluster.

The default tier calls the CLI in this process on the session cluster (``run_main``); the full
tier (``slow``) keeps what needs a process of its own: a SIGKILLed run resumed, the console
script with the local cluster it starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.dataframe as dd
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import (
    BIN,
    assert_same_rows,
    reference,
    run_main,
    subprocess_env,
    write_image_files,
    write_image_parquet,
)

from dask_clip import ImageEmbedder
from dask_clip.cli import main
from dask_clip.columns import embeddings_to_numpy
from dask_clip.io.writer import MANIFEST, part_name

LIST_F32 = pa.list_(pa.float32())
LOCAL = ("--n-workers", "1", "--dashboard-address", "127.0.0.1:0")


N_SHARDS, ROWS = 24, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """24 img2dataset-like shards of 3 rows: a broken image every 5th row, row 1 a copy of row 0."""
    return write_image_parquet(tmp_path_factory.mktemp("in") / "shards", N_SHARDS, ROWS, bad_every=5)


@pytest.fixture(scope="module")
def embedded(shards, model_dir, tmp_path_factory, client) -> Path:
    """``dask-clip embed`` of the shards on the session cluster, in this process."""
    out = tmp_path_factory.mktemp("embedded") / "embeddings"
    run_main("embed", str(shards), str(out), "--model-dir", model_dir, client=client)
    return out


@pytest.fixture(scope="module")
def resumed(shards, model_dir, tmp_path_factory, client) -> dict:
    """``dask-clip embed`` on a local cluster it starts, SIGKILLed once two files exist, run again.

    Slow enough to be caught part-way: many small partitions, batch size 1. The kill needs a
    process of its own; the rerun, which only has to resume, runs in this process on the session
    cluster.
    """
    folder = tmp_path_factory.mktemp("out")
    out = folder / "embeddings"
    args = ["embed", str(shards), str(out), "--model-dir", model_dir, "--batch-size", "1", *LOCAL]
    with open(folder / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask_clip.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=subprocess_env(),
        )
        try:
            deadline = time.monotonic() + 150
            while proc.poll() is None and time.monotonic() < deadline:
                if out.exists() and len(list(out.glob("part-*.parquet"))) >= 2:
                    os.kill(proc.pid, signal.SIGKILL)  # a crash: no cleanup, no goodbye
                    break
                time.sleep(0.02)
            proc.wait(timeout=30)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the cluster's processes, if any outlived the CLI
            except ProcessLookupError:
                pass
            time.sleep(0.2)  # let the signals land before looking at the files
    killed_log = (folder / "killed.log").read_text()
    finished = {p.name: os.stat(p) for p in out.glob("part-*.parquet")}
    again = run_main(*args[: -len(LOCAL)], "--progress", client=client)
    return {"out": out, "returncode": proc.returncode, "killed_log": killed_log, "finished": finished, "proc": again}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_output(resumed, expected):
    out, finished, proc = resumed["out"], resumed["finished"], resumed["proc"]
    assert resumed["returncode"] == -signal.SIGKILL, resumed["killed_log"]
    assert 2 <= len(finished) < N_SHARDS, f"{len(finished)} files: the kill came too late to test resuming"
    todo = N_SHARDS - len(finished)
    assert f"{todo} of {N_SHARDS} partitions to write (resuming)" in proc.stderr
    assert f"wrote {todo} partitions ({len(finished)} already there)" in proc.stdout
    assert sorted(os.listdir(out)) == [MANIFEST] + [part_name(i, N_SHARDS) for i in range(N_SHARDS)]  # no temporaries
    for name, stat in finished.items():  # finished files untouched
        now = os.stat(out / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    # No missing, duplicated or reordered rows: equal to an uninterrupted run.
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), expected)


@pytest.fixture(scope="module")
def expected(shards, model_dir) -> pd.DataFrame:
    """What an uninterrupted run writes: every shard embedded eagerly, in order."""
    return reference(shards, model_dir)


def test_a_partial_output_resumes_and_a_finished_one_rewrites_nothing(
    embedded, shards, model_dir, tmp_path, client, expected
):
    out = tmp_path / "embeddings"
    shutil.copytree(embedded, out)  # a finished run's output, then two of its files lost
    args = ["embed", str(shards), str(out), "--model-dir", model_dir]
    gone = [part_name(i, N_SHARDS) for i in (3, 17)]
    for name in gone:
        (out / name).unlink()
    kept = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    proc = run_main(*args, client=client)
    assert f"2 of {N_SHARDS} partitions to write (resuming)" in proc.stderr
    assert f"wrote 2 partitions ({N_SHARDS - 2} already there)" in proc.stdout
    assert all(os.stat(out / n).st_mtime_ns == t for n, t in kept.items())
    assert sorted(os.listdir(out)) == [MANIFEST] + [part_name(i, N_SHARDS) for i in range(N_SHARDS)]
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), expected)
    again = run_main(*args, client=client)
    assert f"all {N_SHARDS} partitions of {out} are already written; nothing to do" in again.stdout


def test_every_reader_reads_list_float32_embeddings(embedded, expected):
    out = embedded
    plain = pd.read_parquet(out)  # no dtype_backend: object arrays of float32, nulls as None
    assert plain["key"].tolist() == expected["key"].tolist()
    assert plain["embedding"].dropna().iloc[0].dtype == np.float32
    np.testing.assert_allclose(
        embeddings_to_numpy(plain["embedding"]), embeddings_to_numpy(expected["embedding"]), atol=1e-5
    )
    lazy = dd.read_parquet(out, dtype_backend="pyarrow")
    assert lazy.npartitions == N_SHARDS and lazy["embedding"].dtype.pyarrow_dtype == LIST_F32
    assert lazy.compute()["key"].tolist() == expected["key"].tolist()
    assert pq.read_table(out).schema.field("embedding").type == LIST_F32
    n, bad = N_SHARDS * ROWS, N_SHARDS * ROWS // 5
    kinds = duckdb.sql(
        f"SELECT typeof(embedding), count(*), count(embedding) FROM '{out}/*.parquet' GROUP BY 1"
    ).fetchall()
    assert kinds == [("FLOAT[]", n, n - bad)]
    errors = plain.set_index("key")["embedding_error"].dropna()
    assert len(errors) == bad
    assert errors.loc["000004"] == "not a decodable image (unknown format)"
    assert errors.loc["000009"] == "missing image (null)"


@pytest.mark.slow
def test_progress_bar_reports_partitions_images_and_rate(resumed):
    err = resumed["proc"].stderr
    todo = N_SHARDS - len(resumed["finished"])
    assert f"{todo}/{todo}" in err and "images/s" in err


def test_a_different_job_into_the_same_folder_is_refused(embedded, shards, model_dir, client):
    out = embedded
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    args = ["embed", str(shards), str(out), "--model-dir", model_dir, "--output-column", "clip"]
    proc = run_main(*args, client=client, check=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert "different job (columns: ['jpg', 'embedding', 'embedding_error'] there" in err and "--overwrite" in err
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == before


def test_folder_of_image_files_on_an_existing_cluster(tmp_path, model_dir, client):
    paths = write_image_files(tmp_path / "images", 10)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "part-00000.parquet").write_bytes(b"output of another tool")
    args = [
        "embed",
        str(tmp_path / "images"),
        str(out),
        "--model-dir",
        model_dir,
        "--partition-size",
        "4",
        "--remove-image-data",
        "--overwrite",
    ]
    refused = run_main(*args, client=client, check=False)  # --overwrite removes only what a manifest says is ours
    assert refused.returncode == 1
    assert "that no _dask_clip.json describes" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert (out / "part-00000.parquet").read_bytes() == b"output of another tool"
    (out / "part-00000.parquet").unlink()
    proc = run_main(*args, client=client)
    assert "wrote 3 partitions (0 already there), 10 images, 0 errors" in proc.stdout
    got = pd.read_parquet(out, dtype_backend="pyarrow")
    assert list(got.columns) == ["embedding", "embedding_error"]
    frame = pd.DataFrame({"path": pd.array([str(p) for p in paths], dtype=pd.ArrowDtype(pa.string()))})
    expected = ImageEmbedder(model_dir=model_dir, image_column="path", remove_image_data=True).embed_partition(frame)
    assert len(got) == 10
    np.testing.assert_allclose(
        embeddings_to_numpy(got["embedding"]), embeddings_to_numpy(expected["embedding"]), atol=1e-5
    )


def test_dedup_command_flags_the_planted_copy(embedded, tmp_path, client):
    out = embedded
    proc = run_main(
        "dedup",
        str(out),
        str(tmp_path / "dedup"),
        "--eps",
        "0.01",
        "--n-clusters",
        "2",
        "--id-column",
        "key",
        client=client,
    )
    result = pd.read_parquet(tmp_path / "dedup", dtype_backend="pyarrow").set_index("key").sort_index()
    assert len(result) == N_SHARDS * ROWS
    assert bool(result.loc["000001", "duplicate"]) and result.loc["000001", "duplicate_of"] == "000000"
    assert "eps" in proc.stdout


@pytest.mark.slow
def test_demo_with_random_weights_finds_the_planted_duplicates_with_each_step_of_the_plan(tmp_path):
    proc = subprocess.run(  # through the console script, as the README says
        [str(BIN / "dask-clip"), "demo", "--random-weights", "--output", str(tmp_path / "demo"), *LOCAL],
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "seeded RANDOM model" in proc.stdout
    assert "embedded 319 images (3 errors)" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if "planted near-duplicates caught" in x)
    caught, planted = (int(v) for v in line.split("caught: ")[1].split(";")[0].split(" of "))
    assert planted == 36 and caught >= 30, line
    assert len(pd.read_parquet(tmp_path / "demo" / "embeddings")) == 319
    from PIL import Image

    sheet = Image.open(tmp_path / "demo" / "duplicates.png")  # the pairs, as pictures
    assert sheet.width > 300 and sheet.height > 8 * 160
    # the exact -> phash -> semantic plan, from its per-step lines
    step_line = re.compile(r"^\s+(\w+)\s+(\d+) rows in, (\d+) flagged in [\d.]+s; planted copies caught: (\d+)$")
    steps = {m[1]: [int(v) for v in m.groups()[1:]] for m in map(step_line.match, proc.stdout.splitlines()) if m}
    assert list(steps) == ["exact", "phash", "semantic"], proc.stdout
    (exact_in, exact_dups, exact_caught), (phash_in, phash_dups, phash_caught), (semantic_in, _, semantic_caught) = (
        steps.values()
    )
    # each step sees only what the earlier ones kept, and together they catch the planted copies
    assert phash_in == exact_in - exact_dups and semantic_in == phash_in - phash_dups
    assert phash_caught > 0
    assert caught - 2 <= exact_caught + phash_caught + semantic_caught <= planted
    assert f"planted copies caught by the plan: {exact_caught + phash_caught + semantic_caught} of 36" in proc.stdout
    embedded = pd.read_parquet(tmp_path / "demo" / "embeddings", dtype_backend="pyarrow")
    assert embedded["phash"].notna().sum() == 319 - 3  # hashed in the embedding's decode; 3 broken files
    sheet = Image.open(tmp_path / "demo" / "duplicates-steps.png")
    assert sheet.width > 300 and sheet.height > 3 * 160


def test_demo_without_weights_says_what_to_do(capsys):
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "--model-dir" in err and "--pretrained" in err and "--random-weights" in err


def test_info_reports_versions_devices_and_gpu_libraries(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] and info["packages"]["dask-clip"]
    assert info["cpu"]["cores_usable"] >= 1
    assert set(info["gpu_libraries"]) == {"dask_cuda", "cupy", "cudf", "rmm"}
    for probe in info["gpu_libraries"].values():  # each usable with a version, or says why not
        assert probe.get("version") or probe.get("error") or probe["usable"]
    assert main(["info"]) == 0
    assert "gpu libraries" in capsys.readouterr().out


# -- argument errors, in process (no cluster starts) -------------------------------------------


def test_bad_choices_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "in", "out", "--precision", "fp8"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err.replace('"', "'")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model-dir", "MISSING"], "is not a folder"),
        (["--random-weights", "--model-dir", "MISSING"], "--random-weights contradicts --model-dir"),
        (["--model", "ViT-Nope"], "unknown open_clip architecture"),
        (["--image-column", "nope"], "image_column='nope' not in the columns"),
    ],
)
def test_configuration_errors_exit_1_with_a_message(extra, message, shards, tmp_path, model_dir, client):
    if not any(a in ("--model-dir", "--model", "--random-weights") for a in extra):
        extra = [*extra, "--model-dir", model_dir]  # else the workers' preload asks the hub for ViT-L-14
    proc = run_main("embed", str(shards), str(tmp_path / "o"), *extra, client=client, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "o").exists()


def test_missing_input_and_local_options_with_a_scheduler(tmp_path, capsys, model_dir, shards, client):
    args = ["embed", str(tmp_path / "nothing-*.parquet"), str(tmp_path / "o"), "--model-dir", model_dir]
    proc = run_main(*args, client=client, check=False)
    assert proc.returncode == 1 and "matches no file" in proc.stderr
    assert (
        main(
            [
                "embed",
                str(shards),
                str(tmp_path / "o"),
                "--model-dir",
                model_dir,
                "--scheduler-file",
                "s.json",
                "--n-workers",
                "2",
            ]
        )
        == 1
    )
    assert "--n-workers only apply to a local cluster" in capsys.readouterr().err
