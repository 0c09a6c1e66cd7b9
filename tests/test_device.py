"""Device-agnostic parts of the GPU path, run on CPU: device choice, precision, large-downscale
pre-reduction, same-size batching, the nvJPEG routing/fallback logic (with torchvision's CPU
JPEG decoder standing in for nvJPEG), and compute-time GPU resources."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from dask_clip import ImageEmbedder, models
from dask_clip.columns import embeddings_to_numpy
from dask_clip.image import gpu_decode, preprocess
from dask_clip.image.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_bytes
from dask_clip.image.preprocess import PreprocessConfig
from dask_clip.image.sources import get_source
from dask_clip.testing import encode_image, parity

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io: "use TorchCodec"

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def cfg(size: int = 224, **kw) -> PreprocessConfig:
    return PreprocessConfig(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, **kw)


# -- device and precision ----------------------------------------------------------------


def test_auto_device_is_the_workers_cuda0_when_cuda_works(monkeypatch):
    assert models.resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.resolve_device("auto") == torch.device("cuda:0")  # dask-cuda: one visible GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.resolve_device("cuda:1") == torch.device("cuda:1")


def test_precision_maps_to_autocast_and_weight_dtypes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert models._autocast_dtype("auto", cpu) is None
    assert models._autocast_dtype("fp32", cuda) is None
    assert models._autocast_dtype("bf16", cpu) is torch.bfloat16
    assert models._autocast_dtype("fp16", cuda) is torch.float16
    # "auto" on a GPU holds the weights in fp16 (no autocast); fp32 on CPU.
    assert models._autocast_dtype("auto", cuda) is None
    assert models.weights_dtype("auto", cuda) is torch.float16
    assert models.weights_dtype("auto", cpu) is torch.float32
    assert models.weights_dtype("pure_bf16", cpu) is torch.bfloat16
    assert models.weights_dtype("bf16", cuda) is torch.float32  # autocast keeps fp32 weights


def test_bf16_autocast_gives_float32_embeddings_close_to_fp32(model_dir, photo_jpegs):
    frame = pd.DataFrame({"image": photo_jpegs})
    fp32 = ImageEmbedder(model_dir=model_dir, device="cpu", precision="fp32").embed_partition(frame)
    bf16 = ImageEmbedder(model_dir=model_dir, device="cpu", precision="bf16").embed_partition(frame)
    assert str(bf16["embedding"].dtype) == "list<item: float>[pyarrow]"
    got, ref = embeddings_to_numpy(bf16["embedding"]), embeddings_to_numpy(fp32["embedding"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    rel = parity(got, ref)
    assert 0 < rel.max() <= 0.03, rel  # bf16 really ran, and stays close


# -- very large downscales: integer pre-reduction, then the antialiased resize -----------


@pytest.mark.parametrize(
    ("size", "out", "expected"),
    [
        ((3648, 5472), (224, 336), (1, 1)),  # 20 MP to 224: factor 16, no pre-reduction
        ((3648, 5472), (64, 96), (2, 2)),  # factor 57 -> box 2, then 28.5
        ((20000, 300), (224, 224), (3, 1)),  # per axis
        ((100000, 100000), (224, 224), (14, 14)),
    ],
)
def test_prereduce_factors_keep_the_aa_scale_bounded(size, out, expected):
    factors = preprocess.prereduce_factors(*size, *out)
    assert factors == expected
    for n, o, k in zip(size, out, factors):
        left = np.ceil(n / k) / o
        assert left <= preprocess.MAX_AA_SCALE
        assert k == 1 or left > preprocess.MAX_AA_SCALE / 2  # the AA filter still does most of it


def test_prereduce_is_an_area_average_like_pillow_reduce(photos):
    image = np.ascontiguousarray(photos[1][:397, :598])  # odd sizes: partial edge boxes
    got = preprocess.prereduce(torch.from_numpy(image).permute(2, 0, 1), (3, 4)).permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(image).reduce((4, 3)))  # Pillow takes (x, y)
    assert got.shape == ref.shape == (133, 150, 3)
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_resize_crop_never_asks_for_a_downscale_above_the_limit(monkeypatch):
    scales = []
    real_resize = F.resize

    def recording_resize(image, size, **kw):
        out = real_resize(image, size, **kw)
        scales.append(max(image.shape[-2] / out.shape[-2], image.shape[-1] / out.shape[-1]))
        return out

    monkeypatch.setattr(preprocess.F, "resize", recording_resize)
    rng = np.random.default_rng(0)
    for shape in [(6000, 9000), (4000, 250), (300, 300)]:
        image = torch.from_numpy(rng.integers(0, 256, (3, *shape), dtype=np.uint8))
        for mode in ("shortest", "longest", "squash"):
            out = preprocess.resize_crop(image, cfg(64, resize_mode=mode))
            assert tuple(out.shape) == (3, 64, 64)
    assert max(scales) <= preprocess.MAX_AA_SCALE


def test_prereduced_resize_stays_close_to_the_direct_one(photos):
    big = torch.from_numpy(np.array(Image.fromarray(photos[1]).resize((5472, 3648), Image.BICUBIC))).permute(2, 0, 1)
    got = preprocess.resize_crop(big, cfg(64)).to(torch.int32)  # pre-reduced by 2
    direct = F.center_crop(F.resize(big, [64], interpolation=InterpolationMode.BICUBIC, antialias=True), [64, 64])
    diff = (got - direct.to(torch.int32)).abs()
    assert diff.float().mean() < 0.5 and diff.max() <= 4


def test_same_size_images_are_batched_with_unchanged_results(photos):
    c = cfg(64)
    images = [torch.from_numpy(np.ascontiguousarray(p[:300, :400])) for p in photos] + [torch.from_numpy(photos[0])]
    batched = preprocess.preprocess_batch(images, c, torch.device("cpu"))
    one_by_one = torch.cat([preprocess.preprocess_batch([im], c, torch.device("cpu")) for im in images])
    assert torch.equal(batched, one_by_one)


# -- nvJPEG routing and fallbacks, with the CPU JPEG decoder standing in -------------------


def _broken_sampling(jpeg: bytes) -> bytes:
    """A JPEG whose header Pillow reads but whose SOF0 sampling factors no decoder accepts."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 11] = 0  # first component: H=V=0
    return bytes(data)


@pytest.fixture(scope="module")
def mixed_rows(photos) -> dict[str, object]:
    chelsea = photos[2]
    cmyk = io.BytesIO()
    Image.fromarray(chelsea).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    jpeg = encode_image(photos[0], quality=90)
    return {
        "jpeg": jpeg,
        "grayscale jpeg": encode_image(np.asarray(Image.fromarray(chelsea).convert("L")), quality=90),
        "progressive jpeg": encode_image(chelsea, quality=85, progressive=True),
        "cmyk jpeg": cmyk.getvalue(),
        "png": encode_image(photos[1], "PNG"),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "broken jpeg": _broken_sampling(jpeg),
        "null": None,
        "empty": b"",
        "not bytes": "a string",
        "jpeg as memoryview": memoryview(encode_image(photos[3], quality=90)),
    }


def test_routing_sends_only_baseline_rgb_and_gray_jpegs_to_the_device(mixed_rows, monkeypatch):
    routed = {name: gpu_decode.jpeg_on_device(data) for name, data in mixed_rows.items()}
    assert routed == {
        "jpeg": True,
        "grayscale jpeg": True,
        "progressive jpeg": False,  # torchvision decodes those serially, Huffman on the CPU
        "cmyk jpeg": False,
        "png": False,
        "truncated jpeg": False,
        "broken jpeg": True,
        "null": False,
        "empty": False,
        "not bytes": False,
        "jpeg as memoryview": True,
    }
    monkeypatch.setattr(gpu_decode, "PROGRESSIVE_ON_GPU", True)  # what the GPU check measures both ways
    assert gpu_decode.jpeg_on_device(mixed_rows["progressive jpeg"])


def test_bomb_limit_is_read_from_the_header_before_decoding(mixed_rows):
    jpeg = mixed_rows["jpeg"]  # 512 x 512
    assert gpu_decode.jpeg_on_device(jpeg, max_pixels=512 * 512)
    assert not gpu_decode.jpeg_on_device(jpeg, max_pixels=512 * 512 - 1)
    ((pixels, reason),) = gpu_decode.NvjpegDecoder("cpu").decode([jpeg], max_pixels=1000)
    assert pixels is None and reason == decode_bytes(jpeg, max_pixels=1000)[1]
    assert reason.startswith("image too large")


def test_device_decode_keeps_rows_errors_and_pixels_of_the_cpu_path(mixed_rows):
    names, rows = list(mixed_rows), list(mixed_rows.values())
    got = gpu_decode.NvjpegDecoder("cpu").decode(rows, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    assert len(got) == len(rows)
    for name, data, (pixels, reason) in zip(names, rows, got):
        ref_pixels, ref_reason = decode_bytes(data)
        assert reason == ref_reason, name
        if ref_pixels is None:
            assert pixels is None, name
            continue
        assert tuple(pixels.shape) == ref_pixels.shape, name
        assert np.array_equal(np.asarray(pixels), ref_pixels), name  # libjpeg on both sides


def test_a_failed_batch_is_retried_per_image():
    ok = encode_image(np.full((40, 60, 3), 90, np.uint8), quality=90)
    png = encode_image(np.zeros((8, 8, 3), np.uint8), "PNG")  # the JPEG decoder refuses it
    out = gpu_decode.decode_jpegs([ok, png, ok], "cpu")
    assert [None if t is None else tuple(t.shape) for t in out] == [(40, 60, 3), None, (40, 60, 3)]


def test_path_rows_keep_the_readers_reason(tmp_path, mixed_rows):
    (tmp_path / "a.jpg").write_bytes(mixed_rows["jpeg"])
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg"), None]
    got = get_source("path").decode(paths, gpu_decode.NvjpegDecoder("cpu"), max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    assert got[0][0] is not None and got[0][1] is None
    assert got[1] == (None, f"file not found: {tmp_path / 'missing.jpg'}")
    assert got[2] == (None, "missing path (null)")


# -- compute-time GPU resources ----------------------------------------------------------

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
    return pd.DataFrame({"worker": [get_worker().name] * len(df)}, index=df.index)


def test_gpu_resources_at_compute_time_place_and_limit_tasks():
    import dask.dataframe as dd
    from distributed import Client, Scheduler, SpecCluster, Worker

    from dask_clip.resources import compute, gpu_resources

    with pytest.raises(ValueError, match="num_gpus_per_worker"):
        gpu_resources(0)
    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 4, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 4}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    frame = dd.from_pandas(pd.DataFrame({"x": range(24)}), npartitions=12)
    # Built outside any annotation, as dask-expr users do; the resources come at compute time.
    where = frame.map_partitions(_where, meta={"worker": object})
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        _RUNNING["max"] = 0
        placed = compute(client, where, num_gpus_per_worker=0.5).result()
        assert set(placed["worker"]) == {"gpu"} and len(placed) == 24
        assert _RUNNING["max"] == 2  # 1 GPU / 0.5 per task, although the worker has 4 threads
