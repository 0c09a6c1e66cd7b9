"""Shared fixtures: tiny random open_clip models on disk, real photos, a real distributed cluster."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import torch

from dask_clip.testing import encode_image as encode
from dask_clip.testing import write_model_dir

# Dask's background work, quieter in every test process and the processes they start (clusters,
# CLI subprocesses, their workers: through the environment): no sampling profiler (no dashboard
# reads it here), a 200 ms event-loop tick instead of 20 ms, the system monitor every 2 s instead of
# 500 ms. An idle 2-worker LocalCluster used 2.3 CPU-s per 10 s with Dask's defaults and 0.85
# with these. Nothing a test asserts depends on them (the memory monitor, which kills and
# restarts workers, keeps its 100 ms).
QUIET_DASK = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "200ms",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
}
for _name, _value in QUIET_DASK.items():
    os.environ.setdefault(_name, _value)
dask.config.refresh()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="also run the full tier: tests that need a real process boundary (marked `slow`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Start the fork server of the session cluster's workers now: it imports torch, torchvision
    and open_clip (about 5 s of CPU) while pytest collects, instead of each worker importing them
    after the first test that needs the cluster (as the CLI does: `dask_clip.runtime.forkserver`)."""
    from dask_clip.runtime import forkserver

    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # pytest-xdist's controller: its workers run the tests (and start their own)
    forkserver.start_forkserver()


def pytest_unconfigure(config: pytest.Config) -> None:
    from dask_clip.runtime import forkserver

    forkserver.stop_forkserver()  # no wait at exit for an interpreter holding torch to finalise


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `slow` tests unless --runslow (the default tier stays fast, as dask's suite does),
    `gpu` tests cleanly where CUDA is absent, `cudf` tests where cuDF is.

    With --runslow, the default tier runs first and the full tier after it, in one session
    (`make test-all`: one collection, one session cluster); the full tier is skipped when the
    default tier failed (fail fast: its minutes would only repeat the news)."""
    run_slow = config.getoption("--runslow")
    if run_slow:
        items.sort(key=lambda item: "slow" in item.keywords)  # stable: file order within each tier
    has_cuda = torch.cuda.is_available()
    try:
        import cudf  # noqa: F401

        has_cudf = True
    except Exception:
        has_cudf = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="full tier: run with --runslow (make test-all)"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "cudf" in item.keywords and not has_cudf:
            item.add_marker(pytest.mark.skip(reason="needs cuDF"))


_default_tier_failed: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.failed and "slow" not in item.keywords:
        _default_tier_failed.append(item.nodeid)
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "slow" in item.keywords and _default_tier_failed:
        more = f" and {len(_default_tier_failed) - 1} more" if len(_default_tier_failed) > 1 else ""
        pytest.skip(f"the default tier failed ({_default_tier_failed[0]}{more}): fix it first")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny seeded ViT (64 px, 32-d embeddings) in open_clip's local-dir layout."""
    return str(write_model_dir(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real photographs shipped with scikit-image, uint8 (H, W, 3)."""
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]


@pytest.fixture(scope="session")
def photo_jpegs(photos: list[np.ndarray]) -> list[bytes]:
    return [encode(p, quality=90) for p in photos]


@pytest.fixture(scope="session")
def client():
    """A real distributed cluster shared by the tests that can share one: 2 worker processes,
    one thread each, forked from the fork server of pytest_configure as the CLI's are."""
    from distributed import Client, LocalCluster

    from dask_clip.runtime import forkserver
    from dask_clip.runtime.cluster import stop_workers_now

    forked = forkserver.start_forkserver()  # running since pytest_configure: kept as it is
    # forked for this cluster's start only: the clusters tests start spawn their workers, as
    # dask_clip.local_cluster's do (a session worker that dies is spawned again: correct, slower)
    method = {"distributed.worker.multiprocessing-method": "forkserver"} if forked else {}
    with dask.config.set(method):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
    with cluster, Client(cluster) as c:
        yield c
        stop_workers_now(cluster)  # at the session's end, as the CLI does once its output is committed (-3 s)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny open_clip model with a text tower that takes real captions (open_clip's 49,408-token
    vocabulary), 32-d."""
    from dask_clip.testing import TINY_TEXT_MODEL_CFG

    return str(write_model_dir(tmp_path_factory.mktemp("tiny-text-model"), model_cfg=TINY_TEXT_MODEL_CFG))


@pytest.fixture(scope="session")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny open_clip model projecting to 768-d embeddings, the width of ViT-L/14 that the
    published aesthetic and NSFW heads take."""
    from dask_clip.testing import TINY_TEXT_MODEL_CFG

    cfg = {**TINY_TEXT_MODEL_CFG, "embed_dim": 768}
    return str(write_model_dir(tmp_path_factory.mktemp("tiny-768-model"), model_cfg=cfg, seed=1))


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny seeded transformers CLIPModel folder, laid out as published (save_pretrained +
    vocab.json/merges.txt + preprocessor_config.json)."""
    from dask_clip.testing import write_transformers_model_dir

    return str(write_transformers_model_dir(tmp_path_factory.mktemp("tiny-hf-model")))


@pytest.fixture(scope="session")
def nemo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """NeMo Curator's model_dir: the same tiny transformers model under openai/clip-vit-large-patch14/."""
    from dask_clip.testing import write_transformers_model_dir

    return str(write_transformers_model_dir(tmp_path_factory.mktemp("nemo-model-dir"), nemo_layout=True))


@pytest.fixture(scope="session")
def captioned_frame(photo_jpegs):
    """img2dataset-like rows: 5 photos, a broken image and a null one; captions with an empty
    one (row 4) and a null one (row 6)."""
    import pandas as pd
    import pyarrow as pa

    from dask_clip.testing import CAPTIONS

    images = [*photo_jpegs, b"not an image", None]
    return pd.DataFrame(
        {
            "key": pd.Series([f"k{i}" for i in range(len(images))], dtype=pd.ArrowDtype(pa.string())),
            "image": pd.Series(images, dtype=pd.ArrowDtype(pa.binary())),
            "caption": pd.Series(CAPTIONS, dtype=pd.ArrowDtype(pa.string())),
        }
    )
