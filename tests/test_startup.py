"""Start-up of the CLI's local cluster (issue 26): workers forked from a server that imported
torch at the command's start (dask_clip.runtime.forkserver), its off switch, and failures the
client can see before a cluster starts."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from cli_support import run_cli, run_main, subprocess_env, write_image_parquet

from dask_clip.cli import _starts_model_workers
from dask_clip.runtime import forkserver


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["embed", "in", "out"], True),
        (["-v", "demo", "--random-weights"], True),
        (["embed", "in", "out", "--cluster", "cpu"], True),
        (["embed", "in", "out", "--scheduler-file", "s.json"], False),
        (["embed", "in", "out", "--scheduler-address=tcp://h:1"], False),
        (["embed", "--help"], False),
        (["dedup", "in", "out"], False),  # its workers run no model
        (["info"], False),
        ([], False),
    ],
)
def test_the_raw_arguments_tell_which_commands_fork_their_workers(argv, expected):
    assert _starts_model_workers(argv) is expected


def test_the_config_key_turns_forked_workers_off():
    import distributed  # noqa: F401  - its config defaults

    before = dask.config.get("distributed.worker.multiprocessing-method")
    assert dask.config.get("dask_clip.local-cluster.forkserver") is True  # the shipped default
    with dask.config.set({"dask_clip.local-cluster.forkserver": False}), forkserver.forked_workers() as forked:
        assert forked is False
        assert dask.config.get("distributed.worker.multiprocessing-method") == before


def test_a_block_leaves_running_the_fork_server_it_did_not_start(client):
    """The test session's server (conftest, as a notebook that calls ``cli.main`` twice has
    one): an in-process CLI run forks its workers from it and leaves it to its owner. The CLI
    process that starts its own server stops it: the slow test below checks that no process
    outlives the command."""
    server = forkserver.forkserver_pid()
    assert server is not None
    with forkserver.forked_workers() as forked:
        assert forked
        assert forkserver.forkserver_pid() == server
        assert dask.config.get("distributed.worker.multiprocessing-method") == "forkserver"
    assert forkserver.forkserver_pid() == server
    os.kill(server, 0)  # still running
    assert client.run(os.getppid) == dict.fromkeys(
        client.run(os.getppid), server
    )  # the session's workers: its children


def test_an_hf_hub_model_missing_offline_fails_before_a_cluster_starts(tmp_path, monkeypatch):
    from huggingface_hub import constants

    import dask_clip.runtime.cluster as cluster

    def no_cluster(**_):
        raise AssertionError("a cluster was started for a model that cannot be had")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(cluster, "connect_early", no_cluster)
    shards = write_image_parquet(tmp_path / "shards", 1, 2)
    settings = {"dask_clip.model-cache": str(tmp_path / "empty-cache"), "dask_clip.local-cluster.forkserver": False}
    with dask.config.set(settings):
        proc = run_main(
            "embed", str(shards), str(tmp_path / "o"), "--model", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            check=False,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in proc.stderr
    assert "huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a fresh interpreter: the fork server's state is what is tested
def test_the_fork_server_imports_without_threads_or_cuda():
    code = (
        "import os, sys\n"
        "import dask_clip.runtime._forkserver_preload\n"
        "import torch\n"
        "tasks = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
        "driver = any(line.rstrip().endswith(('/libcuda.so.1', '/libcuda.so')) for line in open('/proc/self/maps'))\n"
        "print(sorted(tasks), torch.cuda.is_initialized(), driver, os.environ['OMP_NUM_THREADS'],\n"
        "      [m for m in ('torch', 'torchvision', 'open_clip', 'distributed', 'transformers', 'timm') if m in sys.modules])\n"
        # no TorchDynamo (dask_clip.runtime.torchvision_import); roi_align's helper imports it when called
        "print('dynamo', 'torch._dynamo' in sys.modules)\n"
        "helper = sys.modules['torchvision.ops.roi_align'].is_compile_supported\n"
        "from torch._dynamo.utils import is_compile_supported\n"
        "print('helper', [helper(d) == is_compile_supported(d) for d in ('cpu', 'cuda', 'mps')], hasattr(torch._dynamo, 'reset'))\n"
    )
    env = {k: v for k, v in subprocess_env().items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    tasks, rest = out.stdout.split("]", 1)
    # one Python thread; pyarrow's jemalloc keeps a background thread, which it restarts after fork
    assert tasks.count("'python'") == 1, out.stdout
    assert set(eval(tasks + "]")) <= {"python", "jemalloc_bg_thd"}, out.stdout
    # no CUDA context, no driver loaded; the nanny's pre-spawn environment (OpenMP on 1 thread)
    assert rest.split()[:3] == ["False", "False", "1"], out.stdout
    assert "'torch', 'torchvision', 'open_clip', 'distributed']" in rest, out.stdout  # no transformers, no timm
    assert "dynamo False" in out.stdout, out.stdout
    assert "helper [True, True, True] True" in out.stdout, out.stdout  # and then the real Dynamo


def _embed_on(cluster, model_dir: str, frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Embeddings of ``frame`` computed on ``cluster``'s worker, and that worker's parent pid."""
    import dask.dataframe as dd
    from distributed import Client

    from dask_clip import ImageEmbedder
    from dask_clip.columns import embeddings_to_numpy

    with Client(cluster) as client:
        parent = next(iter(client.run(os.getppid).values()))
        got = ImageEmbedder(model_dir=model_dir, image_column="jpg")(dd.from_pandas(frame, npartitions=2)).compute()
        # nothing on the embedding path imports TorchDynamo (2 s of each worker's start)
        assert not any(client.run(lambda: "torch._dynamo" in sys.modules).values())
    return embeddings_to_numpy(got["embedding"]), parent


@pytest.mark.slow  # two clusters of its own
def test_forked_workers_embed_bit_for_bit_like_spawned_ones(model_dir, photo_jpegs):
    import pyarrow as pa

    from dask_clip import local_cluster

    frame = pd.DataFrame({"jpg": pd.array(photo_jpegs * 2, dtype=pd.ArrowDtype(pa.binary()))})
    options = {"kind": "cpu", "n_workers": 1, "dashboard_address": None}
    with local_cluster(**options) as cluster:
        spawned, spawned_parent = _embed_on(cluster, model_dir, frame)
    before = forkserver.forkserver_pid()  # the test session's (conftest), unless run alone
    with forkserver.forked_workers() as forked, local_cluster(**options) as cluster:
        assert forked
        server = forkserver.forkserver_pid()
        forked_rows, forked_parent = _embed_on(cluster, model_dir, frame)
    assert spawned_parent == os.getpid()  # a nanny of this process spawned it
    assert forked_parent == server != os.getpid()  # the fork server forked it
    assert forkserver.forkserver_pid() == before  # stopped with the block if it started it
    assert spawned.shape == (len(frame), 32)
    np.testing.assert_array_equal(forked_rows, spawned)


def _processes_marked(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


@pytest.mark.slow  # the CLI as users run it, twice
def test_the_cli_with_forked_workers_writes_what_spawned_ones_write_and_leaves_no_process(tmp_path, model_dir):
    shards = write_image_parquet(tmp_path / "shards", 2, 3)
    args = ["embed", str(shards), "--model-dir", model_dir, "--n-workers", "1", "--dashboard-address", "none"]
    outputs = {}
    for forked in ("true", "false"):
        run_id = uuid.uuid4().hex
        env = {**subprocess_env(), "DASK_CLIP__LOCAL_CLUSTER__FORKSERVER": forked, "DASK_CLIP_TEST_RUN": run_id}
        marker = f"DASK_CLIP_TEST_RUN={run_id}"
        proc = run_cli(args[0], args[1], str(tmp_path / forked), *args[2:], env=env)
        assert "wrote 2 partitions" in proc.stdout, proc.stderr
        assert _processes_marked(marker) == []  # no worker, fork server or resource tracker outlives it
        outputs[forked] = pd.read_parquet(tmp_path / forked, dtype_backend="pyarrow")
    assert len(outputs["true"]) == 6
    pd.testing.assert_frame_equal(outputs["true"], outputs["false"])
