"""``dask-clip embed`` on a finished output plans the job before any cluster: nothing to do
starts and waits for no cluster (the connection function is replaced by one that records calls)."""

from __future__ import annotations

import os

from cli_support import run_main, write_image_parquet

from dask_clip.io.writer import MANIFEST, looks_complete, part_name
from dask_clip.runtime import cluster


def test_a_finished_output_is_not_given_a_cluster(tmp_path, model_dir, client, monkeypatch):
    shards = write_image_parquet(tmp_path / "in", 3, 2)
    out = tmp_path / "out"
    args = ["embed", str(shards), str(out), "--model-dir", model_dir]
    assert not looks_complete(out)
    run_main(*args, client=client)
    assert looks_complete(out)
    opened: list[object] = []

    def record(*a: object, **k: object) -> None:
        opened.append(a)
        raise AssertionError("a cluster was connected for a job with nothing to do")

    monkeypatch.setattr(cluster, "_open_client", record)
    again = run_main(*args, client=client)
    assert "3 partitions" in again.stdout and "nothing to do" in again.stdout
    assert opened == []
    # one part lost: the job has work again, and asks for its cluster
    (out / part_name(1, 3)).unlink()
    assert not looks_complete(out)
    assert sorted(os.listdir(out)) == [MANIFEST, part_name(0, 3), part_name(2, 3)]
    failed = run_main(*args, client=client, check=False)
    assert failed.returncode != 0 and len(opened) == 1
