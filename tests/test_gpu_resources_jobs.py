"""The jobs' writes ask for the GPU share as a ``GPU`` resource where workers declare one
(a cluster mixing CPU and GPU workers), and run as before where none does."""

from __future__ import annotations

import threading
import time

import dask.dataframe as dd
import pandas as pd
import pytest

from dask_clip.io.writers.parquet import PARQUET
from dask_clip.io.writers.partitioned import write_format

_LOCK = threading.Lock()
_RUNNING = {"now": 0, "max": 0}


def _where(df: pd.DataFrame) -> pd.DataFrame:
    from distributed import get_worker

    with _LOCK:
        _RUNNING["now"] += 1
        _RUNNING["max"] = max(_RUNNING["max"], _RUNNING["now"])
    time.sleep(0.05)
    with _LOCK:
        _RUNNING["now"] -= 1
    return df.assign(worker=get_worker().name)


@pytest.mark.parametrize("gpu_worker", [True, False])
def test_writes_ask_for_the_gpu_share_where_workers_declare_gpus(tmp_path, gpu_worker):
    from distributed import Client, Scheduler, SpecCluster, Worker

    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 4}}}
    if gpu_worker:
        workers["gpu"] = {"cls": Worker, "options": {"nthreads": 4, "resources": {"GPU": 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    frame = dd.from_pandas(pd.DataFrame({"x": range(24)}), npartitions=12)
    where = frame.map_partitions(_where, meta={"x": "int64", "worker": object})
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        _RUNNING["max"] = 0
        summary = write_format(where, tmp_path / "out", PARQUET, client=client, gpu_share=0.5)
    assert (summary.written, summary.rows) == (12, 24)
    placed = pd.read_parquet(tmp_path / "out")
    assert placed["x"].tolist() == list(range(24))
    if gpu_worker:
        assert set(placed["worker"]) == {"gpu"}
        assert _RUNNING["max"] == 2  # 1 GPU / 0.5 per task, although the worker has 4 threads
    else:
        assert set(placed["worker"]) == {"cpu"}  # no GPU declared: no resource asked, tasks run
