"""The cluster helper: the decisions (GPU or CPU, sizes, dask-cuda options) and a real CPU cluster."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import worker_setup as ws
from dask_clip.runtime import cluster as cl


def plan(**kwargs):
    facts = {
        "n_gpus": 0,
        "dask_cuda_installed": False,
        "cores": 2,
        "rapids_installed": (True, True),
        "cupy_usable": True,
    }
    return cl.plan_local_cluster(**{**facts, **kwargs})


# -- decisions, without starting anything -------------------------------------------------


def test_gpus_with_dask_cuda_give_one_worker_per_gpu_on_rmm():
    p = plan(n_gpus=4, dask_cuda_installed=True, cores=32)
    assert p.kind == "cuda"
    o = p.options
    assert o["n_workers"] == 4 and o["threads_per_worker"] == 4  # 0.25 GPU per task
    assert o["rmm_async"] is True and o["enable_cudf_spill"] is True
    # CuPy on RMM; torch on its own caching allocator (record_stream must work for the decode stream)
    assert o["rmm_allocator_external_lib_list"] == ["cupy"]
    no_cupy = plan(n_gpus=4, dask_cuda_installed=True, cores=32, cupy_usable=False).options
    assert no_cupy["rmm_async"] is True and "rmm_allocator_external_lib_list" not in no_cupy
    assert o["dashboard_address"] == "127.0.0.1:8787"
    assert "jit_unspill" not in o and "rmm_pool_size" not in o  # removed / deprecated with rmm_async
    assert p.torch_threads == 2  # 32 cores / (4 workers * 4 threads)


def test_rapids_options_only_where_rmm_and_cudf_are_installed():
    bare = plan(n_gpus=1, dask_cuda_installed=True, rapids_installed=(False, False)).options
    assert not {"rmm_async", "rmm_allocator_external_lib_list", "enable_cudf_spill"} & set(bare)
    no_cudf = plan(n_gpus=1, dask_cuda_installed=True, rapids_installed=(True, False)).options
    assert no_cudf["rmm_async"] is True and "enable_cudf_spill" not in no_cudf


def test_in_process_cpu_cluster_drops_the_host():
    assert "host" not in plan(processes=False).options
    assert plan().options["host"] == "127.0.0.1"


@pytest.mark.parametrize(("share", "threads"), [(1, 1), (0.5, 2), (0.3, 3), (0.25, 4), (0.1, 10)])
def test_threads_per_gpu_worker_follow_num_gpus_per_worker(share, threads):
    assert cl.threads_per_gpu_worker(share) == threads
    assert plan(n_gpus=1, dask_cuda_installed=True, num_gpus_per_worker=share).options["threads_per_worker"] == threads


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_bad_gpu_share_is_refused(share):
    with pytest.raises(ValueError, match=r"num_gpus_per_worker must be in \(0, 1\]"):
        plan(num_gpus_per_worker=share)


def test_overrides_and_visible_devices_reach_local_cuda_cluster():
    p = plan(
        n_gpus=2,
        dask_cuda_installed=True,
        n_workers=1,
        CUDA_VISIBLE_DEVICES="1",
        rmm_async=False,
        dashboard_address=":8787",
    )
    assert p.options["n_workers"] == 1 and p.options["CUDA_VISIBLE_DEVICES"] == "1"
    assert p.options["rmm_async"] is False and p.options["dashboard_address"] == ":8787"


def test_gpus_without_dask_cuda_fall_back_to_cpu_with_a_hint(caplog):
    with caplog.at_level(logging.WARNING, logger="dask_clip"):
        p = plan(n_gpus=2, dask_cuda_installed=False)
    assert p.kind == "cpu"
    assert "dask-clip[gpu]" in caplog.text


def test_cuda_asked_for_explicitly_needs_dask_cuda_and_a_gpu():
    with pytest.raises(ImportError, match=r"pip install 'dask-clip\[gpu\]'"):
        plan(kind="cuda", n_gpus=1)
    with pytest.raises(ValueError, match="no GPU is visible"):
        plan(kind="cuda", n_gpus=0, dask_cuda_installed=True)
    with pytest.raises(ValueError, match="only 2 GPU"):
        plan(kind="cuda", n_gpus=2, dask_cuda_installed=True, n_workers=3)


def test_cpu_cluster_is_few_processes_with_many_torch_threads():
    small = plan(cores=2)
    assert small.kind == "cpu"
    assert small.options == {
        "n_workers": 1,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:8787",
    }
    assert small.torch_threads == 2
    big = plan(cores=32)
    assert big.options["n_workers"] == 4 and big.torch_threads == 8
    assert plan(cores=32, kind="cpu", n_gpus=8, dask_cuda_installed=True).kind == "cpu"
    assert plan(cores=8, n_workers=2, threads_per_worker=2).torch_threads == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "gpu"}, r"kind='gpu'; choose one of \('auto', 'cpu', 'cuda'\)"),
        ({"n_workers": 0}, "n_workers must be a positive int"),
        ({"torch_threads": 1.5}, "torch_threads must be a positive int"),
    ],
)
def test_bad_arguments_list_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_refuses_a_gpu_cluster_after_a_cuda_context(monkeypatch):
    monkeypatch.setattr(cl, "has_dask_cuda", lambda: True)
    monkeypatch.setattr(cl, "gpu_count", lambda: 2)
    monkeypatch.setattr(cl, "cuda_context_exists", lambda: True)
    with pytest.raises(RuntimeError, match=r"already created a CUDA context.*GPU"):
        cl.local_cluster()


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_importing_and_planning_touch_no_gpu():
    code = (
        "import sys, dask_clip, dask_clip.cli, dask_clip.runtime.cluster, dask_clip.worker_setup, dask_clip.io.read\n"
        "from dask_clip.runtime.cluster import plan_local_cluster\n"
        "plan_local_cluster()\n"
        "print(sorted(m for m in ('dask_cuda', 'cupy', 'cudf', 'rmm', 'open_clip') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- worker setup ----------------------------------------------------------------------------


def test_default_torch_threads(monkeypatch):
    monkeypatch.delenv(ws.TORCH_THREADS_ENV, raising=False)
    assert ws.default_torch_threads(1) == ws.cpu_count()
    assert ws.default_torch_threads(10 * ws.cpu_count()) == 1
    monkeypatch.setenv(ws.TORCH_THREADS_ENV, "3")
    assert ws.default_torch_threads(1) == 3
    monkeypatch.setenv(ws.TORCH_THREADS_ENV, "many")
    with pytest.raises(ValueError, match="DASK_CLIP_TORCH_THREADS='many'; expected a positive integer"):
        ws.default_torch_threads()
    with pytest.raises(ValueError, match="torch_threads must be a positive int"):
        ws.WorkerSetup(0)


def _threads_and_env() -> tuple[int, str | None]:
    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


@pytest.mark.slow
def test_real_cpu_cluster_sets_torch_threads_also_after_a_restart():
    from distributed import Client

    with (
        cl.local_cluster(n_workers=1, torch_threads=2, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == 1 and all(w["nthreads"] == 1 for w in info.values())
        # In a task thread: the nanny's OMP_NUM_THREADS=1 is overridden by the plugin.
        assert client.submit(_threads_and_env, pure=False).result() == (2, "1")
        client.restart()  # the nanny starts a fresh worker process; the scheduler replays the plugin
        assert client.submit(_threads_and_env, pure=False).result() == (2, "1")


def test_connect_reaches_an_existing_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as existing:
        with cl.connect(scheduler_address=existing.scheduler_address) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        with pytest.raises(ValueError, match="not both"):
            with cl.connect(scheduler_address=existing.scheduler_address, scheduler_file="x.json"):
                pass
        with pytest.raises(ValueError, match=r"\['n_workers'\] do not apply to an existing cluster"):
            with cl.connect(scheduler_address=existing.scheduler_address, n_workers=2):
                pass
        assert existing.status.name == "running"  # connect() leaves a cluster it did not start alone


def _faults_of_a_forward_pass() -> int:
    """Minor page faults of ten passes through a transformer MLP block at a ViT-B-32 batch of
    32 images (1,600 tokens x 768): 5 and 20 MB activations, allocated and freed every pass."""
    import resource

    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
    tokens = torch.randn(1600, 768)
    with torch.inference_mode():
        mlp(tokens)  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            mlp(tokens)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.slow
def test_worker_setup_keeps_freed_memory_so_tensors_are_not_faulted_in_again():
    """The nanny's MALLOC_TRIM_THRESHOLD_ makes every large free an munmap, so each forward pass
    page-faults its activations in again; the worker setup turns that back (keep_freed_memory)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        before = client.submit(_faults_of_a_forward_pass, pure=False).result()
        client.register_plugin(ws.WorkerSetup(torch_threads=1))
        after = client.submit(_faults_of_a_forward_pass, pure=False).result()
    assert before > 10 * 6000, before  # every activation faulted in anew, every pass
    assert after < before / 5, (before, after)


def test_a_cluster_without_workers_raises_instead_of_waiting_forever():
    import signal

    # Python's own Ctrl-C handler, whatever this run inherited (nohup and some CI runners ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _no_workers_then_ctrl_c()
    finally:
        signal.signal(signal.SIGINT, previous)


def _no_workers_then_ctrl_c() -> None:
    import signal
    import time

    from distributed import LocalCluster

    from dask_clip.errors import NoWorkersError

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        with cl.connect(scheduler_address=cluster.scheduler_address, worker_timeout=1.5) as client:
            started = time.monotonic()
            future = client.submit(sum, [1, 2], pure=False)
            with pytest.raises(NoWorkersError, match=r"no worker alive for 2 s .*run the same command again"):
                future.result()  # before: waited forever
            assert 1.5 <= time.monotonic() - started < 10
        # outside the watch, and inside it before it fires, Ctrl-C is still a KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with cl.connect(scheduler_address=cluster.scheduler_address, worker_timeout=60):
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)


@pytest.mark.slow  # a local cluster of its own
def test_connect_early_preloads_the_model_once_and_closes_a_cluster_it_never_used(model_dir):
    """The CLI's start: the cluster (and the model on its workers) starts while the client plans."""
    import time

    from distributed import Client

    from dask_clip import ImageEmbedder
    from dask_clip.models import load_counts
    from dask_clip.testing import encode_image, photo_crops

    embedder = ImageEmbedder(model_dir=model_dir)
    spec = embedder.spec
    options = dict(n_workers=1, dashboard_address=None, worker_timeout=30)
    with cl.connect_early(preload=spec, **options) as wait:
        client = wait()
        address = client.scheduler.address
        deadline = time.monotonic() + 60
        while client.run(lambda: load_counts().get(spec, 0)) != dict.fromkeys(client.nthreads(), 1):
            assert time.monotonic() < deadline, "the workers never loaded the model"
            time.sleep(0.2)  # loaded before any task asked for it
        frame = pd.DataFrame(
            {"image": pd.Series([encode_image(photo_crops(1, seed=0)[0])], dtype=pd.ArrowDtype(pa.binary()))}
        )
        out = client.submit(embedder.embed_partition, frame, pure=False).result()
        assert out["embedding_error"].isna().all()
        assert set(client.run(lambda: load_counts().get(spec, 0)).values()) == {1}  # not loaded twice
    with pytest.raises(OSError), Client(address, timeout="2s"):
        pass  # closed with the block
    with cl.connect_early(**options):  # never waited for: e.g. every partition was already written
        pass
