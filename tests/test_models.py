"""Model loading: once per worker process, from the place the user names, never silently random."""

from __future__ import annotations

import threading
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch

from dask_clip import ImageEmbedder, ModelLoadError, ModelSpec
from dask_clip.columns import BINARY_DTYPE, embeddings_to_numpy
from dask_clip.models import get_model, gpu_share, load_counts
from dask_clip.testing import TINY_MODEL_CFG, write_model_dir


def test_one_load_per_worker_process(client, model_dir, photo_jpegs):
    """Many partitions on 2 worker processes: each worker loads exactly once, counted there."""
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs * 8, dtype=BINARY_DTYPE)})
    embedder = ImageEmbedder(model_dir=model_dir, model_inference_batch_size=2)
    ddf = dd.from_pandas(frame, npartitions=20)
    result = embedder(ddf).persist()
    assert len(result.compute()) == 40
    counts = client.run(lambda spec=embedder.spec: load_counts().get(spec, 0))
    assert sorted(counts.values()) == [1, 1], counts
    # A second computation reuses the cached models.
    embedder(ddf).compute()
    counts = client.run(lambda spec=embedder.spec: load_counts().get(spec, 0))
    assert sorted(counts.values()) == [1, 1], counts


def test_cache_is_keyed_by_value_and_thread_safe(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    spec = ModelSpec(model_dir=model_dir, precision="fp32")
    before = load_counts().get(spec, 0)
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: get_model(ModelSpec(model_dir=model_dir, precision="fp32")), range(8)))
    assert all(m is loaded[0] for m in loaded)
    assert load_counts()[spec] == before + 1


def test_torch_load_weights_equal_safetensors(tmp_path, photo_jpegs):
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=BINARY_DTYPE)})
    safe = write_model_dir(tmp_path / "safe", seed=3)
    pickled = write_model_dir(tmp_path / "bin", seed=3, weights="bin")
    a = ImageEmbedder(model_dir=str(safe)).embed_partition(frame)
    b = ImageEmbedder(model_dir=str(pickled)).embed_partition(frame)
    np.testing.assert_array_equal(embeddings_to_numpy(a["embedding"]), embeddings_to_numpy(b["embedding"]))
    other = write_model_dir(tmp_path / "other-seed", seed=4)
    c = ImageEmbedder(model_dir=str(other)).embed_partition(frame)
    assert not np.allclose(embeddings_to_numpy(a["embedding"]), embeddings_to_numpy(c["embedding"]))


def test_model_dir_weights_are_really_loaded(tmp_path):
    """open_clip's local-dir loader with our file: the loaded tensors are the file's tensors."""
    from safetensors.torch import load_file

    folder = write_model_dir(tmp_path / "m", seed=5)
    loaded = get_model(ModelSpec(model_dir=str(folder)))
    on_disk = load_file(str(folder / "open_clip_model.safetensors"))
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, on_disk[name])
    assert loaded.embed_dim == TINY_MODEL_CFG["embed_dim"]
    assert loaded.preprocess.size == (64, 64)


def test_weights_vanishing_after_validation_is_an_error_not_random(tmp_path):
    folder = write_model_dir(tmp_path / "m")
    spec = ModelSpec(model_dir=str(folder))
    spec.validate()
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="holds no weights"):
        get_model(spec)


@pytest.mark.slow
def test_random_weights_are_explicit_and_identical_across_processes(client):
    spec = ModelSpec(model="RN50", pretrained=None)  # a real open_clip architecture, random init
    spec.validate()
    digest = lambda spec=spec: float(sum(p.double().sum() for p in get_model(spec).model.visual.parameters()))  # noqa: E731
    here = digest()
    there = client.run(digest)
    assert all(v == pytest.approx(here, rel=1e-12) for v in there.values())


def test_pretrained_tag_offline_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    # Offline as this machine is, without waiting for connection retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = ModelSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    spec.validate()  # the tag is known; the download is what fails
    with pytest.raises(
        ModelLoadError,
        match="huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR.*model_dir=DIR",
    ):
        get_model(spec)


@pytest.mark.parametrize(("device", "share", "most"), [("cuda:0", 0.5, 2), ("cuda:0", 0.25, 4), ("cpu", 0.5, 6)])
def test_num_gpus_per_worker_bounds_the_tasks_on_one_gpu(device, share, most):
    """``gpu_share`` is what ``ImageEmbedder(num_gpus_per_worker=...)`` holds around its GPU work."""
    lock, running = threading.Lock(), {"now": 0, "max": 0}

    def task() -> None:
        with gpu_share(torch.device(device), share):
            with lock:
                running["now"] += 1
                running["max"] = max(running["max"], running["now"])
            time.sleep(0.1)
            with lock:
                running["now"] -= 1

    threads = [threading.Thread(target=task) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert running["max"] == most  # CPU devices are not limited
