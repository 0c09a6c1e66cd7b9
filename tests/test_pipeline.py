"""The pipeline's stages on CPU: memory bounds, decode budget, schedules, overflow and OOM recovery.

The CUDA parts (streams, events, nvJPEG) run the same code paths here with torch's CPU stand-ins
where torch has them; what only a GPU can show is in tests/test_gpu.py and benchmarks/gpu_check.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dask_clip import ImageEmbedder, embeddings_to_numpy, models
from dask_clip.columns import BINARY_DTYPE
from dask_clip.embed import infer
from dask_clip.embed.pipeline import embed_rows
from dask_clip.image import gpu_decode, preprocess
from dask_clip.image.decode import PILLOW, decode_bytes
from dask_clip.image.sources import get_source
from dask_clip.models.spec import ModelSpec
from dask_clip.testing import encode_image, png_bomb, solid_png, write_model_dir


@pytest.fixture(scope="module")
def tiny(model_dir):
    return models.get_model(ModelSpec(model_dir=model_dir, device="cpu", precision="fp32"))


_PEAK_SCRIPT = """
import sys, threading, time
import psutil
from dask_clip.image.decode import PILLOW
from dask_clip.models import get_model
from dask_clip.image.prepare import prepare_chunk
from dask_clip.image.sources import get_source
from dask_clip.models.spec import ModelSpec

n, model_dir, png = int(sys.argv[1]), sys.argv[2], sys.argv[3]
model = get_model(ModelSpec(model_dir=model_dir, device="cpu", precision="fp32"))
with open(png, "rb") as f:  # read, not made here
    blobs = [f.read()] * n  # 90 MB each, decoded
proc = psutil.Process()
before = proc.memory_info().rss
peak, done = [before], threading.Event()

def sample():  # the RSS peak of this step alone (ru_maxrss would include the imports' peak)
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
chunk = prepare_chunk(blobs, 0, get_source("bytes"), decoder=PILLOW, cfg=model.preprocess,
                      device=model.device, max_pixels=None, max_bytes=None)
done.set()
sampler.join()
assert chunk.inputs.shape[0] == n
print((peak[0] - before) // 1024)
"""


def _peak_kib(n: int, model_dir: str, png: str) -> int:
    import dask
    import distributed  # noqa: F401 - loads the distributed config

    # The environment a Dask nanny gives its worker (MALLOC_TRIM_THRESHOLD_ among it): glibc then
    # hands freed image memory back instead of keeping it for later, as in production.
    worker_env = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(n), model_dir, png],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **worker_env},
    )
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_a_chunk_never_holds_its_images_at_full_size(model_dir, tmp_path):
    """Peak memory of a chunk of 8 images of 90 MB (decoded) is that of one, not of eight."""
    png = tmp_path / "big.png"
    png.write_bytes(solid_png(6000, 5000))
    one, eight = _peak_kib(1, model_dir, str(png)), _peak_kib(8, model_dir, str(png))
    assert one > 60 * 1024  # one decode does show (about 90 MB of pixels)
    assert eight < 1.5 * one, (one, eight)


def test_the_decode_budget_scales_jpegs_down_and_refuses_the_rest():
    photo = np.asarray(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)).resize((1600, 1200))
    )
    jpeg, png = encode_image(photo, quality=90), encode_image(photo, "PNG")
    budget = 1600 * 1200 * 3 // 3  # a third of the full decode
    pixels, reason = decode_bytes(jpeg, max_bytes=budget)
    assert reason is None and pixels.shape == (600, 800, 3)  # 1/2 scale in the DCT: it fits
    pixels, reason = decode_bytes(png, max_bytes=budget)
    assert pixels is None and reason.startswith("image too large to decode: 1600x1200 needs 5 MiB")
    assert "max_decode_bytes" in reason


def test_max_image_pixels_above_pillows_own_hard_limit_applies():
    bomb = png_bomb(15000, 15000)  # 225 MP: above Pillow's 179 MP hard limit
    assert "decompression bomb" in decode_bytes(bomb)[1]
    # A higher limit is ours to give: Pillow's no longer refuses first, the decode budget does.
    _, reason = decode_bytes(bomb, max_pixels=300_000_000, max_bytes=256 * 2**20)
    assert reason.startswith("image too large to decode: 15000x15000")


def test_overlap_and_serial_schedules_give_the_same_rows(tiny, photo_jpegs):
    rows = [*photo_jpegs, b"not an image", None, *photo_jpegs[:2]] * 3
    runs = {
        schedule: embed_rows(
            rows,
            get_source("bytes"),
            model=tiny,
            decoder=PILLOW,
            batch_size=4,
            chunk_rows=5,
            schedule=schedule,
            decode_threads=2,
        )
        for schedule in ("overlap", "serial")
    }
    a, b = runs["overlap"], runs["serial"]
    assert a.errors == b.errors and a.valid.tolist() == b.valid.tolist()
    assert a.valid.sum() == 21 and a.errors[5] == "not a decodable image (unknown format)"
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-6, rtol=1e-5)
    assert {"fetch", "decode+resize", "model"} <= set(a.seconds)


def test_normalisation_constants_are_built_once(tiny, photo_jpegs):
    preprocess._normalization.cache_clear()
    embed_rows(photo_jpegs * 4, get_source("bytes"), model=tiny, decoder=PILLOW, batch_size=2, chunk_rows=4)
    info = preprocess._normalization.cache_info()
    assert info.misses == 1 and info.hits >= 9  # one per forward batch, built once


def test_a_failing_batch_is_bisected_not_retried_image_by_image(monkeypatch):
    ok = encode_image(np.full((40, 60, 3), 90, np.uint8), quality=90)
    png = encode_image(np.zeros((8, 8, 3), np.uint8), "PNG")  # the JPEG decoder refuses it
    calls: list[int] = []
    real = gpu_decode._decode_list

    def counting(tensors, device):
        calls.append(len(tensors))
        return real(tensors, device)

    monkeypatch.setattr(gpu_decode, "_decode_list", counting)
    out = gpu_decode.decode_jpegs([ok] * 7 + [png] + [ok] * 8, "cpu")
    assert [t is None for t in out] == [False] * 7 + [True] + [False] * 8
    assert len(calls) <= 1 + 2 * 4 < 16  # log2(16) levels of two halves, not one call per image


def test_gpu_decode_groups_are_bounded_by_decoded_bytes(monkeypatch):
    blobs = [encode_image(np.full((100, 100, 3), i, np.uint8), quality=90) for i in range(10)]
    sizes: list[int] = []
    real = gpu_decode._decode_list
    decoder = gpu_decode.NvjpegDecoder("cpu")  # its load check decodes once, before the counting
    monkeypatch.setattr(gpu_decode, "_decode_list", lambda t, d: sizes.append(len(t)) or real(t, d))
    results = decoder.decode(blobs, max_pixels=None, max_bytes=3 * 100 * 100 * 3)
    assert sizes == [3, 3, 3, 1] and all(p is not None for p, _ in results)


def test_cuda_devices_always_carry_their_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert models.resolve_device("cuda") == torch.device("cuda:1")
    assert models.resolve_device("cuda:0") == torch.device("cuda:0")


def test_decoding_never_swaps_the_warning_filters(monkeypatch, photo_jpegs):
    """``warnings.catch_warnings`` in concurrent decode threads races; the filters are set once."""

    def forbidden(*args, **kwargs):
        raise AssertionError("catch_warnings in a decode thread")

    monkeypatch.setattr(warnings, "catch_warnings", forbidden)
    results = []
    threads = [threading.Thread(target=lambda: results.append(decode_bytes(photo_jpegs[0]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r[1] is None for r in results)
    assert gpu_decode.NvjpegDecoder("cpu").decode(photo_jpegs[:2], max_pixels=None)[0][1] is None


def test_a_lowered_batch_cap_is_raised_again_after_enough_batches(tiny, monkeypatch):
    monkeypatch.setattr(infer, "CAP_PROBE_BATCHES", 3)
    tiny.batch_size_cap, tiny.batches_under_cap = 2, 0
    inputs = torch.zeros((12, 3, *tiny.preprocess.size), dtype=torch.uint8)
    try:
        infer.encode_inputs(tiny, inputs, batch_size=8)  # 2, 2, 2 -> cap 4; then 4, 2
        assert tiny.batch_size_cap == 4
        infer.encode_inputs(tiny, inputs, batch_size=8)  # 4, 4, 4 -> cap 8 = asked: none
        assert tiny.batch_size_cap is None
    finally:
        tiny.batch_size_cap, tiny.batches_under_cap = None, 0


def test_fp16_overflow_is_recomputed_in_bf16(tmp_path, photo_jpegs):
    """A model whose fp16 output overflows (|x| > 65504) still gives finite, right embeddings."""
    from safetensors.torch import load_file, save_file

    folder = write_model_dir(tmp_path / "loud", seed=4)
    weights = load_file(str(folder / "open_clip_model.safetensors"))
    weights["visual.proj"] = weights["visual.proj"] * 3e4  # huge outputs, same directions
    save_file(weights, str(folder / "open_clip_model.safetensors"))
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=BINARY_DTYPE)})
    fp32 = ImageEmbedder(model_dir=str(folder), device="cpu", precision="fp32").embed_partition(frame)
    fp16 = ImageEmbedder(model_dir=str(folder), device="cpu", precision="pure_fp16").embed_partition(frame)
    got, ref = embeddings_to_numpy(fp16["embedding"]), embeddings_to_numpy(fp32["embedding"])
    assert np.isfinite(got).all() and fp16["embedding_error"].isna().all()
    assert np.abs(got - ref).max() < 0.05  # bf16 precision, fp16 weights


def test_pure_fp16_weights_stay_close_to_fp32(model_dir, photo_jpegs):
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=BINARY_DTYPE)})
    fp32 = embeddings_to_numpy(
        ImageEmbedder(model_dir=model_dir, device="cpu", precision="fp32").embed_partition(frame)["embedding"]
    )
    fp16 = embeddings_to_numpy(
        ImageEmbedder(model_dir=model_dir, device="cpu", precision="pure_fp16").embed_partition(frame)["embedding"]
    )
    rel = np.linalg.norm(fp16 - fp32, axis=1)
    assert 0 < rel.max() < 0.01, rel  # fp16 really ran, and stays close (bf16: ~0.02)
