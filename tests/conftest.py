"""Shared fixtures: tiny random open_clip models on disk, real photos, a real distributed cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dask_clip.testing import encode_image as encode
from dask_clip.testing import write_model_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests cleanly where CUDA is absent, `cudf` tests where cuDF is."""
    has_cuda = torch.cuda.is_available()
    try:
        import cudf  # noqa: F401

        has_cudf = True
    except Exception:
        has_cudf = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "cudf" in item.keywords and not has_cudf:
            item.add_marker(pytest.mark.skip(reason="needs cuDF"))


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
    one thread each."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c
