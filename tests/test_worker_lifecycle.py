"""One worker lifecycle: the caches of a process in one registry, the preload plugin that reaches
workers started later, the per-node download lock."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from dask_clip import ModelSpec
from dask_clip.embed import pipeline
from dask_clip.heads import zero_shot_heads
from dask_clip.heads.cache import get_head
from dask_clip.heads.zero_shot import class_embeddings
from dask_clip.models import clear_cache, get_model, load_counts
from dask_clip.runtime import caches
from dask_clip.runtime.node_lock import node_lock
from dask_clip.runtime.worker import PRELOAD_PREFIX, ModelPreload


def test_clear_all_empties_the_model_head_zero_shot_and_thread_caches(text_model_dir):
    spec = ModelSpec(model_dir=text_model_dir, precision="fp32")
    head = zero_shot_heads(["cat", "dog"])[0]
    model = get_model(spec)
    loaded_head = get_head(spec, head)
    classes, _ = class_embeddings(model, ["cat", "dog"], ["a photo of a {}."])
    assert get_model(spec) is model and get_head(spec, head) is loaded_head  # cached
    count = load_counts()[spec]
    pool = pipeline._prepare_pool()
    assert pipeline._prepare_pool() is pool  # one decode thread per task thread, kept

    cleared = caches.clear_all()
    assert {"models", "heads", "zero-shot classes", "decode threads"} <= set(cleared)
    again = get_model(spec)
    assert again is not model and load_counts()[spec] == count + 1  # loaded anew
    assert get_head(spec, head) is not loaded_head
    recomputed, _ = class_embeddings(again, ["cat", "dog"], ["a photo of a {}."])
    assert pipeline._prepare_pool() is not pool and pool._shutdown  # stopped; a new one on next use
    assert recomputed is not classes and bool((recomputed == classes).all())  # same weights, same classes
    clear_cache()  # the public name clears the same registry
    assert get_model(spec) is not again


def test_preload_plugin_loads_in_the_background_and_teardown_clears(text_model_dir):
    """The plugin's own setup/teardown, run in this process as a worker runs them."""
    spec = ModelSpec(model_dir=text_model_dir, precision="fp32", device="cpu")
    plugin = ModelPreload(spec)
    assert plugin.name.startswith(PRELOAD_PREFIX) and plugin.idempotent
    assert ModelPreload(ModelSpec(model_dir=text_model_dir, precision="fp32", device="cpu")).name == plugin.name
    assert ModelPreload(ModelSpec(model_dir=text_model_dir, precision="bf16")).name != plugin.name
    clear_cache()
    before = load_counts().get(spec, 0)
    plugin.setup(worker=None)  # returns at once; the load runs in a thread
    deadline = time.monotonic() + 60
    while load_counts().get(spec, 0) == before:
        assert time.monotonic() < deadline, "the plugin never loaded the model"
        time.sleep(0.05)
    loaded = get_model(spec)
    assert load_counts()[spec] == before + 1  # the task's get_model found the preloaded one
    plugin.teardown(worker=None)
    assert get_model(spec) is not loaded and load_counts()[spec] == before + 2


def test_node_lock_excludes_another_holder_of_the_same_key(tmp_path):
    entered = threading.Event()

    def other() -> None:
        with node_lock("ViT-B-32/openai", str(tmp_path)):
            entered.set()

    with node_lock("ViT-B-32/openai", str(tmp_path)) as path:
        assert path.parent == tmp_path and path.exists()
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.5)  # waits for us
        with node_lock("ViT-B-32/laion2b_s34b_b79k", str(tmp_path)):
            pass  # another key: not blocked
    assert entered.wait(30)
    thread.join()


@pytest.mark.slow  # a local cluster of its own, and a worker killed with SIGKILL
def test_a_restarted_worker_is_preloaded_before_its_first_task(model_dir):
    """The nanny restarts a killed worker; the scheduler replays the preload plugin on it, so the
    new process loads the model without any task asking (Client.run reached only live workers)."""
    from dask_clip.runtime import cluster as cl

    spec = ModelSpec(model_dir=model_dir)

    def loaded_on_workers(client) -> dict:
        return client.run(lambda: load_counts().get(spec, 0))

    def wait_for(predicate, what: str) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                if predicate():
                    return
            except OSError:  # the scheduler still lists the killed worker for a moment
                pass
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    with cl.connect(preload=spec, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        wait_for(lambda: set(loaded_on_workers(client).values()) == {1}, "the first worker never loaded the model")
        (old_pid,) = client.run(os.getpid).values()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: set(client.run(os.getpid).values()) - {old_pid}, "the nanny never restarted the worker")
        (worker,) = client.scheduler_info()["workers"]
        assert client.run(lambda dask_worker: len(dask_worker.state.tasks)) == {worker: 0}  # no task yet
        wait_for(lambda: loaded_on_workers(client) == {worker: 1}, "the restarted worker was not preloaded")
        # the same spec again (the next job): idempotent, the worker keeps its model
        from dask_clip.runtime.worker import register_preload

        register_preload(client, spec)
        assert loaded_on_workers(client) == {worker: 1}
        # another model's job: the old plugin is removed (new workers load only this one), the new one replayed;
        # the running worker keeps the old model (another job's tasks may still use it)
        other = ModelSpec(model_dir=model_dir, precision="bf16")
        register_preload(client, other)
        plugins = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.worker_plugins))
        assert [p for p in plugins if p.startswith(PRELOAD_PREFIX)] == [ModelPreload(other).name]
        wait_for(lambda: client.run(lambda: load_counts().get(other, 0)) == {worker: 1}, "other never preloaded")
        assert client.run(lambda: (get_model(spec), load_counts()[spec])[1]) == {worker: 1}


@pytest.mark.slow  # a cluster of its own
def test_a_closing_worker_clears_its_caches(model_dir):
    """In-process workers share this process's caches, so a worker's close is seen here."""
    from distributed import Client, LocalCluster

    from dask_clip.runtime.worker import register_preload

    spec = ModelSpec(model_dir=model_dir, precision="fp32", device="cpu")
    clear_cache()
    before = load_counts().get(spec, 0)
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        register_preload(client, spec)
        deadline = time.monotonic() + 60
        while load_counts().get(spec, 0) == before:
            assert time.monotonic() < deadline, "the in-process worker never preloaded"
            time.sleep(0.05)
        loaded = get_model(spec)
        client.unregister_worker_plugin(ModelPreload(spec).name)  # removed, worker running: kept
        assert get_model(spec) is loaded
        register_preload(client, spec)
    assert get_model(spec) is not loaded  # the worker's close cleared the cache; loaded anew
