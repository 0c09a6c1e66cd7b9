"""A killed build never leaves an index that loads, and the next run resumes it.

The build runs in a separate process that is killed (SIGKILL, no clean-up) while its add step
is under way: two partitions have their shard, the others are held back by a delay wrapped
around the real add function.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dask_clip.index import IndexNotFoundError, build, load
from dask_clip.testing import embedding_array

ROOT = Path(__file__).resolve().parents[2]
N_PARTITIONS = 6


pytestmark = pytest.mark.slow  # builds in child processes, killed part-way


def write_embeddings(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    df = pd.DataFrame({"key": [f"{seed}-{i}" for i in range(600)]})
    df["embedding"] = embedding_array(x, np.ones(600, bool))
    with dask.config.set(scheduler="threads"):
        dd.from_pandas(df, npartitions=N_PARTITIONS).to_parquet(folder)
    return folder


def start_slow_build(source: Path, index_dir: Path, marker: Path, overwrite: bool) -> subprocess.Popen:
    """A build, one task at a time, whose tasks wait a minute (after writing ``marker``) once
    two shards are written."""
    code = textwrap.dedent(
        f"""
        import pathlib, time, dask
        import dask_clip.index.add as add
        real = add.add_partition
        def slow(df, partition, **kwargs):
            # one task at a time: the first two go through, the others wait to be killed
            if len(list(pathlib.Path(kwargs["build_dir"], "shards").glob("shard-*"))) >= 2:
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            return real(df, partition, **kwargs)
        add.add_partition = slow
        from dask_clip.index import build
        with dask.config.set(scheduler="threads", num_workers=1):
            build({str(source)!r}, {str(index_dir)!r}, index_key="IVF4,Flat", overwrite={overwrite})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def kill_when_two_shards(process: subprocess.Popen, index_dir: Path, marker: Path) -> None:
    shards = index_dir / "_build" / "shards"
    deadline = time.monotonic() + 120
    while not (marker.exists() and len(list(shards.glob("shard-*.faiss"))) >= 2):
        assert process.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "the build never reached its add step"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_first_build_leaves_nothing_loadable_and_resumes(tmp_path):
    source = write_embeddings(tmp_path / "emb", seed=0)
    index_dir = tmp_path / "idx"
    process = start_slow_build(source, index_dir, tmp_path / "reached", overwrite=False)
    kill_when_two_shards(process, index_dir, tmp_path / "reached")

    assert not (index_dir / "index.json").exists()
    with pytest.raises(IndexNotFoundError, match="interrupted"):
        load(index_dir)

    with dask.config.set(scheduler="threads"):
        resumed = build(source, index_dir, index_key="IVF4,Flat")
        build(source, tmp_path / "clean", index_key="IVF4,Flat")
    assert (resumed.skipped, resumed.added) == (2, 4)
    assert "train" not in resumed.steps  # the trained index of the killed run was reused
    queries = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    pd.testing.assert_frame_equal(
        load(index_dir).search(queries, k=5, nprobe=4), load(tmp_path / "clean").search(queries, k=5, nprobe=4)
    )


def test_killed_rebuild_keeps_the_previous_index(tmp_path):
    old_source = write_embeddings(tmp_path / "old", seed=1)
    new_source = write_embeddings(tmp_path / "new", seed=2)
    index_dir = tmp_path / "idx"
    with dask.config.set(scheduler="threads"):
        build(old_source, index_dir, index_key="IVF4,Flat")
    queries = np.random.default_rng(3).standard_normal((10, 16)).astype(np.float32)
    before = load(index_dir).search(queries, k=5)
    manifest = (index_dir / "index.json").read_bytes()

    process = start_slow_build(new_source, index_dir, tmp_path / "reached", overwrite=True)
    kill_when_two_shards(process, index_dir, tmp_path / "reached")

    assert (index_dir / "index.json").read_bytes() == manifest
    pd.testing.assert_frame_equal(load(index_dir).search(queries, k=5), before)
    assert load(index_dir).search(queries, k=1)["key"].str.startswith("1-").all()

    with dask.config.set(scheduler="threads"):  # the same request again resumes the rebuild
        resumed = build(new_source, index_dir, index_key="IVF4,Flat")
    assert resumed.skipped == 2
    after = load(index_dir).search(queries, k=1)
    assert after["key"].str.startswith("2-").all()
    assert len([p for p in index_dir.iterdir() if p.name.startswith("v-")]) == 1  # old version removed
