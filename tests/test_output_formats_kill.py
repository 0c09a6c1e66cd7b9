"""``dask-clip embed --output-format laion|lance`` killed mid-run (SIGKILL to the whole process
group: CLI, nanny and worker), then run again: it resumes, keeps what was committed, and the
output equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
from cli_support import reference, run_main, subprocess_env, write_image_parquet

from dask_clip.columns import embeddings_to_numpy
from dask_clip.io.writers.laion import read_laion
from dask_clip.io.writers.lance import FRAGMENTS, read_lance

pytestmark = pytest.mark.slow


def _markers(out: Path, name: str) -> list[Path]:
    folder = out / ("img_emb" if name == "laion" else FRAGMENTS)
    return sorted(p for p in folder.glob("*") if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.parametrize("name", ["laion", "lance"])
def test_a_killed_run_resumes_and_keeps_the_committed_partitions(name, tmp_path, model_dir, client):
    shards = write_image_parquet(tmp_path / "in", 12, 3, bad_every=5)
    out = tmp_path / "out"
    args = ["embed", str(shards), str(out), "--model-dir", model_dir, "--output-format", name]
    args += ["--embedding-dtype", "float32", "--batch-size", "1"]
    own_cluster = ["--n-workers", "1", "--dashboard-address", "none"]
    with open(tmp_path / "cli.log", "w") as log:
        cli = subprocess.Popen(
            [sys.executable, "-m", "dask_clip.cli", *args, *own_cluster],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
            start_new_session=True,
        )
    try:
        end = time.monotonic() + 150
        while time.monotonic() < end and cli.poll() is None and len(_markers(out, name)) < 2:
            time.sleep(0.02)
        assert cli.poll() is None, (tmp_path / "cli.log").read_text()
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    committed = {p: p.stat().st_mtime_ns for p in _markers(out, name)}
    assert 2 <= len(committed) < 12
    if name == "lance":
        with pytest.raises(ValueError):
            lance.dataset(str(out))  # killed before the commit: no version to read a part of
    again = run_main(*args, client=client)  # only the kill needs a process: resume on the session cluster
    assert "(resuming)" in again.stderr and f"wrote {12 - len(committed)} partitions" in again.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in committed.items())  # not written again
    expected = reference(shards, model_dir)
    got = (read_laion(out) if name == "laion" else read_lance(out)).compute()
    valid = expected["embedding"].notna() if name == "laion" else np.ones(len(expected), dtype=bool)
    assert got["key"].tolist() == expected["key"][valid].tolist()
    want = embeddings_to_numpy(expected["embedding"])[np.asarray(valid)]
    np.testing.assert_allclose(embeddings_to_numpy(got["embedding"]), want, rtol=0, atol=1e-5)
