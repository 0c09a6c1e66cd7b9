"""Multi-node, on one host with real processes: `dask scheduler --scheduler-file`, two
`dask worker --preload dask_clip.worker_setup`, then the CLI and a Python driver."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from cli_support import (
    assert_same_rows,
    dask_scheduler_command,
    dask_worker_command,
    reference,
    run_cli,
    subprocess_env,
    write_image_parquet,
)

pytestmark = pytest.mark.slow  # subprocesses and clusters of their own: `pytest -m 'not slow'` skips them

N_SHARDS = 6


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env())


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory):
    """A scheduler and two single-thread workers started from the command line, on 127.0.0.1."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("multinode")
    sched = folder / "scheduler.json"
    common = ["--dashboard-address", "127.0.0.1:0"]
    procs = [
        _start(
            dask_scheduler_command(sched, *common),
            folder / "scheduler.log",
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not sched.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(2):
            procs.append(
                _start(
                    dask_worker_command(sched, "--name", f"node{i}", *common),
                    folder / f"worker{i}.log",
                )
            )
        with Client(scheduler_file=str(sched), timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield sched, folder
    finally:
        # SIGKILL: a graceful close takes seconds; a worker process exits when its nanny dies.
        for proc in reversed(procs):
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_image_parquet(tmp_path_factory.mktemp("in") / "shards", N_SHARDS, 5, seed=7, bad_every=9)


def test_preload_sets_torch_threads_on_cli_workers(scheduler_file):
    from distributed import Client

    def _torch_threads() -> tuple[int, str | None]:  # nested: pickled by value, the workers cannot import tests
        import torch

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    sched, _ = scheduler_file
    with Client(scheduler_file=str(sched)) as client:
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
        want = (max(1, len(os.sched_getaffinity(0))), "1")  # all cores for a 1-thread worker; OMP=1 from the nanny
        # A preload runs at every worker start, restarts included (test_cluster restarts a plugin's workers).
        assert [client.submit(_torch_threads, workers=[a], pure=False).result() for a in workers] == [want, want]


def test_cli_on_the_scheduler_file_equals_the_local_run(scheduler_file, shards, model_dir, tmp_path):
    sched, folder = scheduler_file
    out = tmp_path / "cli"
    proc = run_cli(
        "--verbose",
        "embed",
        str(shards),
        str(out),
        "--model-dir",
        model_dir,
        "--batch-size",
        "2",
        "--scheduler-file",
        str(sched),
    )
    assert f"wrote {N_SHARDS} partitions" in proc.stdout
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))
    # --verbose: each worker logs its partitions' images/s; both workers took part.
    logs = [(folder / f"worker{i}.log").read_text() for i in range(2)]
    counts = [log.count("images/s") for log in logs]
    assert sum(counts) == N_SHARDS and all(counts), counts


def test_python_driver_on_the_scheduler_file_equals_the_local_run(scheduler_file, shards, model_dir, tmp_path):
    """This test process is the driver script: the multi-node recipe of docs/clusters.md, verbatim."""
    from distributed import Client

    from dask_clip import ImageEmbedder, read_images, write_parquet

    sched, _ = scheduler_file
    out = tmp_path / "driver"
    with Client(scheduler_file=str(sched)) as client:
        ddf, column = read_images(shards)
        summary = write_parquet(ImageEmbedder(model_dir=model_dir, image_column=column)(ddf), out)
        assert summary.counts == {} and client.scheduler_info(n_workers=-1)["workers"]
    assert (summary.partitions, summary.written, summary.rows) == (N_SHARDS, N_SHARDS, N_SHARDS * 5)
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))
