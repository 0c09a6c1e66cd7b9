"""The GPU path's defects of issue 19 that can be caught on CPU: the nvJPEG stream barrier, empty
nulls in embedding columns, a loud failure where torchvision cannot decode JPEGs on the device."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip import backends
from dask_clip.backends import arrow
from dask_clip.columns import LIST_FLOAT32
from dask_clip.image import gpu_decode
from dask_clip.testing import encode_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io: "use TorchCodec"


# -- item 2: a stream barrier before every decode_jpeg call ----------------------------------------


def test_the_stream_barrier_comes_before_every_decode_call(monkeypatch, photo_jpegs):
    """A corrupt JPEG inside the batch makes the decoder bisect: several decode calls, each one
    preceded by the barrier (torchvision's CPU decoder stands in for nvJPEG)."""
    import torchvision.io

    calls: list[str] = []
    real_decode = torchvision.io.decode_jpeg

    def recording_decode(*args, **kwargs):
        calls.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", recording_decode)
    monkeypatch.setattr(gpu_decode, "_stream_barrier", lambda device: calls.append(f"barrier {device}"))
    corrupt = photo_jpegs[1][:600] + b"\x00" * 400 + photo_jpegs[1][-2:]  # parses, fails to decode
    blobs = [*photo_jpegs[:2], corrupt, *photo_jpegs[2:4]]
    out = gpu_decode.NvjpegDecoder("cpu").decode(blobs, max_pixels=None)
    assert sum(p is not None for p, _ in out) >= 4
    assert calls.count("decode") >= 3  # the batch, then its halves
    assert calls == ["barrier cpu", "decode"] * calls.count("decode")


def test_the_barrier_synchronises_the_callers_cuda_stream(monkeypatch):
    """On CUDA the barrier waits for the current stream of the decode device (a stand-in stream
    records it here; no CUDA device on this machine); on CPU it does nothing."""
    waited: list[object] = []

    class Stream:
        def __init__(self, device):
            self.device = device

        def synchronize(self):
            waited.append(self.device)

    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    gpu_decode._stream_barrier(torch.device("cuda:1"))
    gpu_decode._stream_barrier(torch.device("cpu"))
    assert waited == [torch.device("cuda:1")]


# -- item 5: null rows of an embedding column hold no values -----------------------------------------


def test_null_rows_are_empty_in_the_shared_list_layout():
    valid = np.array([True, False, True, False])
    offsets = arrow.list_offsets(valid, 3)
    assert offsets.tolist() == [0, 3, 3, 6, 6]  # no value under a null row
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    column = backends.output_column(pd.DataFrame(index=range(4)), LIST_FLOAT32, values, valid)
    array = pa.chunked_array(column.__arrow_array__()).combine_chunks()
    assert len(array.values) == 6 and array.null_count == 2
    assert np.diff(array.offsets.to_numpy())[~valid].tolist() == [0, 0]
    assert array.to_pylist() == [[0.0, 1.0, 2.0], None, [3.0, 4.0, 5.0], None]


# -- item 7: no silent Pillow fallback for every image ------------------------------------------------


def test_a_torchvision_that_cannot_decode_jpegs_fails_at_load(monkeypatch):
    import torchvision.io

    gpu_decode.NvjpegDecoder("cpu")  # this torchvision decodes: fine
    monkeypatch.setattr(gpu_decode, "_CHECKED", set())
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    with pytest.raises(RuntimeError, match=r"decode_device='cpu'"):
        gpu_decode.NvjpegDecoder("cpu")


def test_a_decode_op_that_raises_fails_at_load_not_per_image(monkeypatch):
    import torchvision.io

    def missing_op(*args, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(gpu_decode, "_CHECKED", set())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", missing_op)
    with pytest.raises(RuntimeError, match="not compiled with nvJPEG support"):
        gpu_decode.NvjpegDecoder("cpu")


def test_the_load_check_decodes_a_real_jpeg():
    pixels, _ = gpu_decode.decode_jpegs([encode_image(np.full((8, 8, 3), 200, np.uint8))], "cpu")[0], None
    assert pixels is not None and tuple(pixels.shape) == (8, 8, 3)


# -- item 4: a dask-cuda that does not import --------------------------------------------------------


@pytest.fixture
def broken_dask_cuda(tmp_path, monkeypatch):
    """An installed dask_cuda package whose import fails, as with an incompatible cuda-core."""
    package = tmp_path / "site" / "dask_cuda"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('cuda.core 0.0 is not supported')\n")
    (package / "utils.py").write_text("def get_n_gpus():\n    return 8\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in list(__import__("sys").modules) if m.startswith("dask_cuda")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    return package


def test_a_dask_cuda_that_does_not_import_falls_back_to_cpu_workers(broken_dask_cuda, caplog):
    import logging

    from dask_clip.runtime import cluster

    assert "does not import" in cluster.dask_cuda_problem() and "cuda.core" in cluster.dask_cuda_problem()
    assert cluster.gpu_count() == torch.cuda.device_count()  # torch counts instead: no raise
    with caplog.at_level(logging.WARNING, logger="dask_clip"):
        plan = cluster.plan_local_cluster("auto", n_gpus=2, cores=16)
    assert plan.kind == "cpu"
    assert "does not import" in caplog.text
    with pytest.raises(ImportError, match="does not import"):
        cluster.plan_local_cluster("cuda", n_gpus=2, cores=16)


# -- item 8: one decode thread (and so one decode stream) per task thread ------------------------------


def test_the_overlap_schedule_keeps_one_decode_thread_per_task_thread(model_dir, photo_jpegs):
    """Partitions one after another on a task thread use the same decode thread: a new one per
    partition would take a new CUDA stream from torch's small pool each time."""
    import threading

    from dask_clip.embed.pipeline import embed_rows
    from dask_clip.image.decode import PILLOW
    from dask_clip.image.sources import get_source
    from dask_clip.models import get_model
    from dask_clip.models.spec import ModelSpec

    model = get_model(ModelSpec(model_dir=model_dir, device="cpu", precision="fp32"))
    source = get_source("bytes")
    seen: list[threading.Thread] = []  # the threads themselves: kept alive, never confused
    real_fetch = source.fetch

    def recording_fetch(rows, **kwargs):
        seen.append(threading.current_thread())
        return real_fetch(rows, **kwargs)

    source.fetch = recording_fetch  # type: ignore[method-assign]
    try:
        results = [
            embed_rows(photo_jpegs, source, model=model, decoder=PILLOW, batch_size=2, chunk_rows=2, schedule="overlap")
            for _ in range(3)
        ]

        def on_other_task_thread():
            embed_rows(photo_jpegs, source, model=model, decoder=PILLOW, batch_size=2, chunk_rows=2, schedule="overlap")

        other = threading.Thread(target=on_other_task_thread)
        other.start()
        other.join()
    finally:
        del source.fetch
    assert all(r.valid.all() for r in results)
    first, last = seen[:9], seen[9:]  # 3 partitions x 3 chunks, then the other task thread's 3
    assert len(set(first)) == 1 and first[0].name.startswith("dask-clip-prepare")
    assert len(set(last)) == 1 and last[0] is not first[0]
    torch.testing.assert_close(results[0].embeddings, results[2].embeddings)


# -- throughput: Pillow fallbacks decoded by a shared, bounded pool -----------------------------------


def test_fallbacks_decode_in_the_shared_pool_in_row_order(photos, photo_jpegs):
    from dask_clip.image.decode import PILLOW

    pngs = [encode_image(p, "PNG") for p in photos[:3]]
    progressive = [encode_image(p, quality=90, progressive=True) for p in photos[3:]]
    blobs = [pngs[0], photo_jpegs[0], *progressive, b"not an image", pngs[1], photo_jpegs[1], pngs[2]]
    got = gpu_decode.NvjpegDecoder("cpu").decode(blobs, max_pixels=None)
    ref = PILLOW.decode(blobs, max_pixels=None)
    for (a, reason_a), (b, reason_b), blob in zip(got, ref, blobs):
        assert reason_a == reason_b
        if blob in pngs or blob in progressive:  # the fallbacks: Pillow's own pixels
            np.testing.assert_array_equal(a, b)


def test_the_pool_holds_at_most_its_size_in_decoded_images_across_callers():
    import threading
    import time

    pool = gpu_decode.FallbackPool(2)
    lock = threading.Lock()
    held = {"now": 0, "max": 0}

    def decode(item):
        with lock:
            held["now"] += 1
            held["max"] = max(held["max"], held["now"])
        time.sleep(0.01)
        return item, None

    def consume(n):
        out = []
        for result in pool.map_ordered(decode, list(range(n))):
            with lock:
                held["now"] -= 1
            out.append(result[0])
        assert out == list(range(n))  # in order

    threads = [threading.Thread(target=consume, args=(12,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)  # no caller waits on another
    assert held["max"] <= 2 + len(threads)  # the pool's 2, plus the one each caller was just handed
    stopped = pool.map_ordered(decode, list(range(10)))
    next(stopped)
    stopped.close()  # a caller that stops early gives its slots back
    assert [r[0] for r in pool.map_ordered(lambda x: (x, None), [7, 8, 9])] == [7, 8, 9]
    assert pool._slots._value == 2
