"""Out-of-memory back-off, on CPU: a real tiny model whose ``encode_image`` raises the errors
CUDA raises (torch's ``OutOfMemoryError``, RMM's ``bad_alloc``) for batches above k images."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch

from dask_clip import ImageEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.embed.infer import encode_images, is_out_of_memory
from dask_clip.models import get_model
from dask_clip.models.spec import ModelSpec
from dask_clip.testing import write_model_dir

RMM_OOM = "std::bad_alloc: out_of_memory: CUDA error (failed to allocate 123 bytes) at: rmm/mr/device/cuda_memory_resource.hpp"


@pytest.fixture(scope="module")
def oom_model_dir(tmp_path_factory) -> str:
    # A model folder of its own: its cached LoadedModel (and batch_size_cap) is this module's.
    return str(write_model_dir(tmp_path_factory.mktemp("oom-model")))


@pytest.fixture
def loaded(oom_model_dir):
    model = get_model(ModelSpec(model_dir=oom_model_dir, device="cpu", precision="fp32"))
    model.batch_size_cap = None
    yield model
    model.batch_size_cap = None
    model.model.__dict__.pop("encode_image", None)


@contextlib.contextmanager
def fails_above(loaded, k: int, make_error):
    """Make the real model's encode_image fail like CUDA for batches above k; record sizes."""
    real = type(loaded.model).encode_image.__get__(loaded.model)
    seen: list[int] = []

    def encode_image(pixels, *args, **kwargs):
        seen.append(len(pixels))
        if len(pixels) > k:
            raise make_error()
        return real(pixels, *args, **kwargs)

    loaded.model.encode_image = encode_image
    try:
        yield seen
    finally:
        del loaded.model.encode_image


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.integers(0, 256, (48 + i, 64 + 2 * i, 3), dtype=np.uint8)) for i in range(37)]


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError(RMM_OOM),
    ],
    ids=["torch-oom", "rmm-bad-alloc"],
)
def test_batches_halve_until_they_fit_and_the_size_is_remembered(loaded, images, make_error):
    expected = encode_images(loaded, images, batch_size=32)
    with fails_above(loaded, 5, make_error) as seen:
        got = encode_images(loaded, images, batch_size=32)
    assert seen[:4] == [32, 16, 8, 4]  # halved down to what fits
    assert loaded.batch_size_cap == 4
    assert set(seen[3:]) <= {4, 1}  # then every batch uses the remembered size (37 = 9 x 4 + 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with fails_above(loaded, 5, make_error) as seen_again:
        again = encode_images(loaded, images, batch_size=32)
    assert max(seen_again) == 4  # remembered: no more failed attempts
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)


def test_out_of_memory_with_one_image_and_other_errors_propagate(loaded, images):
    def oom():
        return torch.cuda.OutOfMemoryError("CUDA out of memory")

    with fails_above(loaded, 0, oom), pytest.raises(torch.cuda.OutOfMemoryError):
        encode_images(loaded, images[:3], batch_size=4)
    assert loaded.batch_size_cap == 1
    loaded.batch_size_cap = None
    with (
        fails_above(loaded, 2, lambda: ValueError("a real bug")) as seen,
        pytest.raises(ValueError, match="a real bug"),
    ):
        encode_images(loaded, images[:8], batch_size=8)
    assert seen == [8] and loaded.batch_size_cap is None


def test_is_out_of_memory_knows_torch_and_rmm():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError(RMM_OOM))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator error type


def test_embed_partition_backs_off_and_matches_an_unconstrained_run(loaded, oom_model_dir, photo_jpegs):
    frame = pd.DataFrame({"image": photo_jpegs * 3})
    embedder = ImageEmbedder(model_dir=oom_model_dir, device="cpu", precision="fp32", model_inference_batch_size=8)
    expected = embeddings_to_numpy(embedder.embed_partition(frame)["embedding"])
    with fails_above(loaded, 3, lambda: torch.cuda.OutOfMemoryError("CUDA out of memory")):
        out = embedder.embed_partition(frame)
    assert loaded.batch_size_cap == 2
    assert out["embedding_error"].isna().all()
    np.testing.assert_allclose(embeddings_to_numpy(out["embedding"]), expected, atol=1e-5)
