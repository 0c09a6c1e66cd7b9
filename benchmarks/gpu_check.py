"""GPU check: one command that settles, on one GPU, what the CUDA and cuDF code does and how fast.

On a GPU machine (no network; needs torch, torchvision, numpy, pandas, pyarrow, pillow plus the
pure-Python wheels that scripts/fetch-wheels.sh puts in ./.whl, see docs/gpu.md)::

    python3 benchmarks/gpu_check.py --out DIR       # budgeted to end within 450 s

Here, on CPU, to test the plumbing with a tiny model and a few images::

    python benchmarks/gpu_check.py --dry-run --out /tmp/results

Writes ``DIR/gpu-<gpu>-<date>.json`` (``--out``; default benchmarks/results, and a copy there
when ``--out`` is elsewhere): the steps (status, seconds, figures) and
``checks``, each ``{"pass": true/false/null, "value": ..., "goal": ...}``. Every step has its own
time budget and records its own error; the file is rewritten after every step, so a failure or a
kill still leaves what was measured. A figure that was not measured is null, never estimated.

Steps (docs/gpu.md states the design and the figure expected of each):
environment (versions, GPU, bf16, the allocator torch uses on the workers) · the GPU tests ·
decode (nvJPEG against Pillow per kind of image, fallbacks, corrupt JPEGs in a batch, images/s
baseline and progressive) · preprocessing (CUDA against CPU, a 9000 x 12000 image) · parity of
the default CUDA path and of ``decode_device="cpu"`` against open_clip's CPU reference, per
precision · model-only images/s at batch 32/256/512 per precision · end-to-end images/s on a
LocalCUDACluster and its ratio to model-only · out-of-memory back-off on a real allocation ·
determinism (twice, and 4 task threads against one) · the cuDF hand-offs where cuDF imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import io
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` is a folder of the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.check_support import Cluster, Report, StepTimeout  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GPU_TEST_FILES = [
    "tests/test_cuda_rules.py",
    "tests/test_gpu.py",
    "tests/backends/test_cudf_backend.py",
    "tests/test_oom.py",
    "tests/test_device.py",
    "tests/test_pipeline.py",
    "tests/test_heads.py",
]
PRECISIONS = ("auto", "pure_bf16", "bf16")  # fp16 weights (the default), bf16 weights, bf16 autocast
PARITY_GOAL = 0.01
E2E_GOAL_VIT_L = 2500.0
RATIO_GOAL = 0.9


# -- images --------------------------------------------------------------------------------------


def _web_chunk(args: tuple[int, int, tuple[int, int], tuple[int, int], tuple[str, ...] | None]) -> list[Any]:
    n, seed, min_size, max_size, kinds = args
    from dask_clip.testing import web_images

    return web_images(n, seed=seed, min_size=min_size, max_size=max_size, kinds=kinds)


def make_images(
    n: int, seed: int, min_size: tuple[int, int], max_size: tuple[int, int], kinds: tuple[str, ...] | None = None
) -> list[Any]:
    """:func:`dask_clip.testing.web_images`, made in parallel processes (distinct per chunk)."""
    chunks = [(min(16, n - i), seed * 1000 + i, min_size, max_size, kinds) for i in range(0, n, 16)]
    workers = max(1, min(len(chunks), (os.cpu_count() or 2) - 1))
    if workers == 1 or n <= 32:  # a pool's interpreters cost more than a few small images
        return [image for chunk in map(_web_chunk, chunks) for image in chunk]
    # spawn, not fork: this process already runs a Dask client's threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [image for chunk in pool.map(_web_chunk, chunks) for image in chunk]


# -- environment ---------------------------------------------------------------------------------


def _allocator_on_worker() -> dict[str, Any]:
    """Which allocator torch uses in this process (run on the workers)."""
    import torch

    out: dict[str, Any] = {"torch_backend": torch.cuda.get_allocator_backend() if torch.cuda.is_available() else None}
    out["rmm_imported"] = "rmm" in sys.modules
    if "rmm" in sys.modules:
        out["rmm_resource"] = type(sys.modules["rmm"].mr.get_current_device_resource()).__name__
    try:
        out["torch_allocator"] = type(torch.cuda.memory._get_current_allocator()).__name__
    except Exception as err:
        out["torch_allocator"] = f"unknown ({type(err).__name__})"
    if "cupy" in sys.modules:
        allocator = sys.modules["cupy"].cuda.get_allocator()
        out["cupy_allocator"] = getattr(allocator, "__qualname__", repr(allocator))
    return out


def environment(report: Report, record: dict[str, Any], cluster: Cluster, cpu: bool) -> None:
    import torch
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_available": torch.cuda.is_available(),
        "host": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    if torch.cuda.is_available() and not cpu:
        props = torch.cuda.get_device_properties(0)
        env.update(
            device=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    else:
        env["device"] = "cpu"
    for name in ("dask", "distributed", "open_clip", "dask_cuda", "cupy", "rmm", "cudf", "dask_cudf", "pytest"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "installed")
        except Exception as err:
            env[name] = f"not available ({type(err).__name__}: {err})"[:200]
    workers = cluster.client.run(_allocator_on_worker) if cluster.client is not None else {}
    env["workers_allocator"] = next(iter(workers.values()), None)
    record.update(env)
    report.data["device"] = env["device"]
    report.data["environment"] = env


def import_dask_cuda() -> dict[str, Any]:
    """Whether dask-cuda imports here, with its version or the error (never raises)."""
    started = time.monotonic()
    try:
        import dask_cuda
    except Exception as err:
        return {"dask_cuda": None, "error": f"{type(err).__name__}: {err}"[:400]}
    return {
        "dask_cuda": getattr(dask_cuda, "__version__", "installed"),
        "seconds": round(time.monotonic() - started, 2),
    }


def run_pytest(record: dict[str, Any], budget: float, dry_run: bool) -> None:
    try:
        import pytest  # noqa: F401
    except ImportError:
        record.update(result="pytest is not installed: GPU tests not run")
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    files = ["tests/test_device.py"] if dry_run else GPU_TEST_FILES
    marks = "gpu" if dry_run else "gpu or cudf"
    command = [sys.executable, "-m", "pytest", "-m", marks, "-q", "-rs", "-p", "no:cacheprovider", *files]
    record["command"] = " ".join(command[1:])
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget, check=False)
    except subprocess.TimeoutExpired as err:
        record.update(result=f"timed out after {budget:.0f} s", output_tail=str(err.stdout or "")[-3000:])
        raise StepTimeout(f"pytest ran past {budget:.0f} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = next(
        (line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|deselected)", line)),
        "",
    )
    record.update(returncode=proc.returncode, result=summary)
    if proc.returncode not in (0, 5):  # 5: nothing collected/selected
        record["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"GPU tests failed: {summary}")


# -- decode --------------------------------------------------------------------------------------


def _rate(work: Any, n_per_call: int, seconds: float, sync: Any) -> float:
    work()
    sync()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or done == 0:
        work()
        done += n_per_call
    sync()
    return round(done / (time.perf_counter() - started), 1)


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return round(float(np.mean(numbers)), 3) if numbers else None


def _pixel_diffs(decoder: Any, members: list[Any]) -> dict[str, Any]:
    """Pixels a decoder gives for images of one kind, against Pillow's."""
    import torch

    from dask_clip.image.decode import decode_bytes

    per_image = []
    for member, (pixels, reason) in zip(members, decoder.decode([m.data for m in members], max_pixels=None)):
        ref, ref_reason = decode_bytes(member.data, max_pixels=None)
        on_device = isinstance(pixels, torch.Tensor) and pixels.device.type != "cpu"
        entry: dict[str, Any] = {"on_device": bool(on_device), "reason": reason, "pillow_reason": ref_reason}
        if pixels is not None and ref is not None:
            mine = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
            if mine.shape == ref.shape:
                d = np.abs(mine.astype(np.int16) - ref.astype(np.int16))
                entry.update(mean_abs=round(float(d.mean()), 3), max_abs=int(d.max()))
            else:
                entry["shapes"] = (list(mine.shape), list(ref.shape))
        per_image.append(entry)
    return {
        "images": len(members),
        "on_device": sum(e["on_device"] for e in per_image),
        "mean_abs_diff": _mean([e.get("mean_abs") for e in per_image]),
        "max_abs_diff": max([e.get("max_abs", 0) for e in per_image] or [0]),
        "errors_agree": all((e["reason"] is None) == (e["pillow_reason"] is None) for e in per_image),
    }


def _corrupt_in_batch(decoder: Any, good: list[bytes], corrupt: list[bytes], device: str) -> list[dict[str, Any]]:
    """Decode corrupt-but-parsable JPEGs inside a batch of good ones, twice, and each alone."""
    import torch

    from dask_clip.image import gpu_decode
    from dask_clip.image.decode import decode_bytes

    batch = good[:8] + corrupt + good[8:16]
    where = list(range(8, 8 + len(corrupt)))
    if device.startswith("cuda"):  # leave a pattern in freed memory: unwritten buffers would show it
        torch.empty(256 * 2**20, dtype=torch.uint8, device=device).fill_(0xAB)
    first = decoder.decode(batch, max_pixels=None)
    second = decoder.decode(batch, max_pixels=None)
    outcome = []
    for i in where:
        single = gpu_decode.decode_jpegs([batch[i]], device)[0]
        a, b = first[i][0], second[i][0]
        entry: dict[str, Any] = {"error": first[i][1], "pillow_error": decode_bytes(batch[i], max_pixels=None)[1]}
        if a is not None:
            a_, b_ = (np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x) for x in (a, b))
            entry["same_twice"] = bool(np.array_equal(a_, b_))
            if single is not None:
                entry["same_as_alone"] = bool(np.array_equal(a_, single.cpu().numpy()))
            entry["on_device"] = isinstance(a, torch.Tensor) and a.device.type != "cpu"
        outcome.append(entry)
    return outcome


def decode_checks(report: Report, record: dict[str, Any], images: list[Any], device: str, dry: bool) -> None:
    """nvJPEG against Pillow per kind; fallbacks; corrupt JPEGs in a batch; decode images/s."""
    import torch

    from dask_clip.image import gpu_decode
    from dask_clip.image.decode import PILLOW, decode_bytes

    decoder = gpu_decode.NvjpegDecoder(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_kind: dict[str, list[Any]] = {}
    for image in images:
        by_kind.setdefault(image.kind, []).append(image)

    gpu_decode.PROGRESSIVE_ON_GPU = True  # measure progressive JPEGs on the device too
    try:
        diffs = {kind: _pixel_diffs(decoder, members) for kind, members in by_kind.items()}
    finally:
        gpu_decode.PROGRESSIVE_ON_GPU = False
    record["per_kind"] = diffs
    for kind, goal in (("jpeg 4:4:4", 0.6), ("jpeg 4:2:0", 2.0), ("grayscale", 0.6)):
        value = diffs.get(kind, {}).get("mean_abs_diff")
        report.check(
            f"decode: nvJPEG vs Pillow mean |diff|, {kind}",
            None if value is None else value <= goal,
            value,
            f"<= {goal}",
        )
    gray = by_kind.get("grayscale", [])[:1]
    if gray:
        pixels, _ = decoder.decode([gray[0].data], max_pixels=None)[0]
        t = torch.as_tensor(np.asarray(pixels.cpu()) if isinstance(pixels, torch.Tensor) else pixels)
        report.check(
            "decode: grayscale JPEG gives 3 equal channels",
            t.shape[-1] == 3 and bool(torch.equal(t[..., 0], t[..., 2])),
        )
    fallbacks = [m for k in ("png", "webp", "cmyk") for m in by_kind.get(k, [])]
    if fallbacks:
        got = decoder.decode([m.data for m in fallbacks], max_pixels=None)
        exact = all(
            isinstance(p, np.ndarray) and np.array_equal(p, decode_bytes(m.data, max_pixels=None)[0])
            for m, (p, _) in zip(fallbacks, got)
        )
        report.check("decode: PNG/WebP/CMYK fall back to Pillow exactly", exact, len(fallbacks))

    # The batched decoder reports one status per batch and may leave an image's buffer unwritten:
    # no corrupt image may come back without an error unless its pixels are reproducible.
    good = [m.data for m in by_kind.get("jpeg 4:2:0", [])[:24]]
    corrupt = [m.data for m in by_kind.get("corrupt", [])]
    if good and corrupt:
        outcome = _corrupt_in_batch(decoder, good, corrupt, device)
        record["corrupt_in_batch"] = outcome
        unsafe = [
            e for e in outcome if e.get("on_device") and not (e.get("same_twice") and e.get("same_as_alone", True))
        ]
        report.check(
            "decode: a corrupt JPEG in a batch never yields unreproducible pixels without an error",
            not unsafe,
            f"{len(outcome)} corrupt, {sum(1 for e in outcome if e['error'])} errors, {len(unsafe)} unsafe",
        )

    rates: dict[str, Any] = {}
    baseline = [m.data for m in by_kind.get("jpeg 4:2:0", [])][:64] or good
    progressive = [m.data for m in by_kind.get("progressive", [])][:64]
    seconds = 0.2 if dry else 3.0
    rates["baseline nvjpeg"] = _rate(lambda: decoder.decode(baseline, max_pixels=None), len(baseline), seconds, sync)
    rates["baseline pillow, 1 thread"] = _rate(
        lambda: PILLOW.decode(baseline, max_pixels=None), len(baseline), seconds, sync
    )
    if progressive:
        gpu_decode.PROGRESSIVE_ON_GPU = True
        try:
            rates["progressive nvjpeg"] = _rate(
                lambda: decoder.decode(progressive, max_pixels=None), len(progressive), seconds, sync
            )
        finally:
            gpu_decode.PROGRESSIVE_ON_GPU = False
        rates["progressive pillow, 1 thread"] = _rate(
            lambda: PILLOW.decode(progressive, max_pixels=None), len(progressive), seconds, sync
        )
        record["progressive_on_gpu_is_faster"] = rates["progressive nvjpeg"] > rates["progressive pillow, 1 thread"]
    record["images_per_second"] = rates
    record["mean_megapixels"] = round(float(np.mean([m.width * m.height for m in images])) / 1e6, 2)


# -- preprocessing -------------------------------------------------------------------------------


def preprocess_checks(
    report: Report, record: dict[str, Any], images: list[Any], device: str, huge_size: tuple[int, int]
) -> None:
    import torch
    from PIL import Image

    from dask_clip.image.decode import decode_bytes
    from dask_clip.image.preprocess import PreprocessConfig, resize_crop, to_chw

    cfg = PreprocessConfig(size=(224, 224), mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    diffs = []
    decoded = [p for p, _ in (decode_bytes(i.data, max_pixels=None) for i in images[:16]) if p is not None]
    for pixels in decoded:
        chw = to_chw(torch.from_numpy(np.ascontiguousarray(pixels)))
        cpu = resize_crop(chw, cfg).to(torch.int16)
        dev = resize_crop(chw.to(device), cfg).cpu().to(torch.int16)
        diffs.append(int((cpu - dev).abs().max()))
    record["max_abs_diff_per_image"] = diffs
    worst = max(diffs) if diffs else None
    report.check(
        "preprocess: CUDA resize vs CPU resize, max |diff| (uint8 levels)",
        None if worst is None else worst <= 3,
        worst,
        "<= 3",
    )
    huge = np.asarray(Image.fromarray(decoded[0]).resize(huge_size))  # (width, height); GPU: factor 40 and more
    chw = to_chw(torch.from_numpy(np.ascontiguousarray(huge)))
    big = int(
        (resize_crop(chw.to(device), cfg).cpu().to(torch.int16) - resize_crop(chw, cfg).to(torch.int16)).abs().max()
    )
    name = f"preprocess: a {huge_size[1]} x {huge_size[0]} image resizes on the device like on the CPU"
    report.check(name, big <= 3, big, "<= 3 levels")


# -- parity --------------------------------------------------------------------------------------


def parity_check(
    report: Report, record: dict[str, Any], model: dict[str, Any], device: str, blobs: list[bytes]
) -> None:
    """Parity (docs/design.md) of dask_clip on ``device`` against open_clip's CPU fp32 reference."""
    import copy

    import open_clip
    import pandas as pd
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from dask_clip import ImageEmbedder, embeddings_to_numpy
    from dask_clip.models import get_model
    from dask_clip.testing import parity

    record.update(images=len(blobs), model=model["name"], weights="random (pretrained=None): no network")
    base = ImageEmbedder(**model["kwargs"], device=device, precision="fp32", decode_device="cpu")
    cpu_model = copy.deepcopy(get_model(base.spec).model).float().cpu().eval()
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(cpu_model)), is_train=False)
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        reference = torch.nn.functional.normalize(cpu_model.encode_image(batch), dim=-1).numpy()
    del cpu_model
    frame = pd.DataFrame({"image": blobs})
    variants = {
        "default (nvJPEG, fp16 weights)": dataclasses.replace(base, precision="auto", decode_device="auto"),
        "decode_device=cpu, fp16 weights": dataclasses.replace(base, precision="auto"),
        "nvJPEG, fp32": dataclasses.replace(base, decode_device="auto"),
        "decode_device=cpu, fp32": base,
        "nvJPEG, bf16 weights (pure_bf16)": dataclasses.replace(base, precision="pure_bf16", decode_device="auto"),
        "nvJPEG, bf16 autocast": dataclasses.replace(base, precision="bf16", decode_device="auto"),
    }
    figures = {}
    for name, embedder in variants.items():
        rel = parity(embeddings_to_numpy(embedder.embed_partition(frame)["embedding"]), reference)
        figures[name] = {"max": round(float(rel.max()), 5), "median": round(float(np.median(rel)), 5)}
        record["variants"] = figures
    for name in ("default (nvJPEG, fp16 weights)", "decode_device=cpu, fp16 weights"):
        value = figures[name]["max"]
        report.check(f"parity: {name}", value <= PARITY_GOAL, value, f"<= {PARITY_GOAL}")


# -- throughput ----------------------------------------------------------------------------------


def model_only(model: dict[str, Any], device: str, precision: str, batch: int, seconds: float) -> float:
    """Images/s of the model on its preprocessed input, already on the device, as the embedder
    runs it (weights dtype, autocast), after warm-up."""
    import torch

    from dask_clip import ImageEmbedder
    from dask_clip.embed.infer import _forward
    from dask_clip.models import get_model

    loaded = get_model(ImageEmbedder(**model["kwargs"], device=device, precision=precision).spec)
    x = torch.randn(batch, 3, *loaded.preprocess.size, device=loaded.device)
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            _forward(loaded, x, True, loaded.autocast_dtype)
        sync()
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds or done < 3 * batch:
            _forward(loaded, x, True, loaded.autocast_dtype)
            done += batch
            if done % (8 * batch) == 0:
                sync()  # keep the clock honest without stalling every batch
        sync()
    return round(done / (time.perf_counter() - started), 1)


@functools.lru_cache(maxsize=4)
def _distinct_images(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("image").combine_chunks()


def tiled_partition(path: str, rows: int, number: int) -> Any:
    """One pandas partition of ``rows`` encoded images (binary), tiled from a Parquet file of
    distinct ones, read once per worker process."""
    import pandas as pd
    import pyarrow as pa

    images = _distinct_images(path)
    take = pa.array((np.arange(rows) + number * 7) % len(images))
    index = pd.RangeIndex(number * rows, (number + 1) * rows)
    return pd.DataFrame({"image": pd.arrays.ArrowExtensionArray(images.take(take))}, index=index)


def _summary(df: Any, error_column: str) -> Any:
    import pandas as pd

    return pd.DataFrame({"rows": [len(df)], "failed": [int(df[error_column].notna().sum())]})


def end_to_end(
    cluster: Cluster, embedder: Any, parquet: str, images: int, rows_per_partition: int, timeout: float
) -> dict[str, Any]:
    """Images/s from encoded images in pandas partitions to embeddings, on the cluster's worker."""
    import dask.dataframe as dd
    import pandas as pd

    client = cluster.start()
    meta = tiled_partition(parquet, 0, 0)
    partitions = max(1, images // rows_per_partition)
    empty = pd.DataFrame({"rows": [0], "failed": [0]}).iloc[:0]

    def job(n_parts: int) -> Any:
        ddf = dd.from_map(
            tiled_partition, [parquet] * n_parts, [rows_per_partition] * n_parts, list(range(n_parts)), meta=meta
        )
        return embedder(ddf).map_partitions(_summary, embedder.error_column, meta=empty)

    started = time.perf_counter()
    client.compute(job(cluster.threads)).result(timeout=timeout)  # loads the model on the worker: not timed
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = client.compute(job(partitions)).result(timeout=max(1.0, timeout - load_s))
    seconds = time.perf_counter() - started
    rows, failed = int(summary["rows"].sum()), int(summary["failed"].sum())
    return {
        "end_to_end_img_s": round(rows / seconds, 1),
        "images": rows,
        "failed": failed,
        "partitions": partitions,
        "rows_per_partition": rows_per_partition,
        "seconds": round(seconds, 2),
        "warm_up_with_model_load_s": round(load_s, 2),
    }


def end_to_end_runs(
    report: Report,
    cluster: Cluster,
    runs: list[tuple[dict[str, Any], int]],
    big: dict[str, Any],
    model_only_rates: dict[str, dict[int, float]],
    parquet: str,
    sizes: tuple[int | None, int],
    device: str,
    budget: float,
) -> None:
    """End-to-end images/s of each (model, batch), and its ratio to model-only at that batch."""
    from dask_clip import ImageEmbedder

    n_images, rows_per_partition = sizes
    dry = device == "cpu"
    report.data["runs"] = []
    for model, batch in runs:
        embedder = ImageEmbedder(**model["kwargs"], device=device, model_inference_batch_size=batch)
        reference = model_only_rates.get("auto", {}).get(batch) if model is big else None
        if reference is None:
            reference = model_only(model, device, "auto", batch, 0.2 if dry else 3.0)
        wanted = n_images or int(min(60000, max(4096, reference * 12)) // rows_per_partition * rows_per_partition)
        run: dict[str, Any] = {"model": model["name"], "batch_size": batch, "model_only_img_s": reference}
        run.update(end_to_end(cluster, embedder, parquet, wanted, rows_per_partition, budget / len(runs) - 2))
        run["ratio"] = round(run["end_to_end_img_s"] / reference, 3) if reference else None
        report.data["runs"].append(run)
        report.write()
    for run in report.data["runs"]:
        ratio = run["ratio"]
        name = f"end-to-end/model-only, {run['model']} b{run['batch_size']}"
        report.check(name, None if ratio is None else ratio >= RATIO_GOAL, ratio, f">= {RATIO_GOAL}")
    vit_l = [r["end_to_end_img_s"] for r in report.data["runs"] if r["model"] == "ViT-L-14"]
    if vit_l:
        goal = f">= {E2E_GOAL_VIT_L:.0f} (one H100)"
        report.check("ViT-L-14 end-to-end images/s", max(vit_l) >= E2E_GOAL_VIT_L, max(vit_l), goal)


# -- robustness ----------------------------------------------------------------------------------


def oom_check(report: Report, record: dict[str, Any], model: dict[str, Any], blobs: list[bytes]) -> None:
    """A real out-of-memory: the process may use only a little more than the model needs."""
    import pandas as pd
    import torch

    from dask_clip import ImageEmbedder, embeddings_to_numpy
    from dask_clip.models import get_model

    embedder = ImageEmbedder(**model["kwargs"], device="cuda", model_inference_batch_size=512, decode_device="cpu")
    frame = pd.DataFrame({"image": (blobs * (1024 // len(blobs) + 1))[:1024]})
    small_batches = dataclasses.replace(embedder, model_inference_batch_size=32)
    expected = embeddings_to_numpy(small_batches.embed_partition(frame)["embedding"])
    loaded = get_model(embedder.spec)
    loaded.batch_size_cap = None
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    allowed = torch.cuda.memory_allocated() + 3 * 2**30  # batch 512 of ViT-L-14 activations need more
    torch.cuda.set_per_process_memory_fraction(allowed / total)
    try:
        got = embeddings_to_numpy(embedder.embed_partition(frame)["embedding"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    cap = loaded.batch_size_cap
    loaded.batch_size_cap = None
    diff = float(np.abs(got - expected).max())
    record.update(batch_size_cap=cap, limit_gib=round(allowed / 2**30, 1), max_abs_diff=diff)
    report.check(
        "OOM: a real out-of-memory halves the batch and the results are unchanged",
        cap is not None and cap < 512 and diff < 1e-2,
        {"cap": cap, "max_abs_diff": diff},
    )


def determinism_check(
    report: Report, record: dict[str, Any], cluster: Cluster, embedder: Any, blobs: list[bytes]
) -> None:
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    from dask_clip import embeddings_to_numpy

    rows = (blobs * (256 // len(blobs) + 1))[:256]
    frame = pd.DataFrame({"image": pd.Series(rows, dtype=pd.ArrowDtype(pa.binary()))})
    a = embeddings_to_numpy(embedder.embed_partition(frame)["embedding"])
    b = embeddings_to_numpy(embedder.embed_partition(frame)["embedding"])
    client = cluster.start()
    c = embeddings_to_numpy(client.compute(embedder(dd.from_pandas(frame, npartitions=8))).result()["embedding"])
    twice, threads = float(np.abs(a - b).max()), float(np.abs(a - c).max())
    record.update(twice_max_abs_diff=twice, threads_max_abs_diff=threads, threads=cluster.threads)
    report.check("determinism: the same partition twice gives the same embeddings", twice == 0.0, twice, "== 0")
    report.check(
        f"determinism: {cluster.threads} task threads on a worker vs one, within fp16",
        threads < 5e-3,
        threads,
        "< 5e-3",
    )


def cudf_checks(report: Report, record: dict[str, Any], model: dict[str, Any], blobs: list[bytes], tmp: str) -> None:
    """The cuDF hand-offs, where cuDF imports: zero-copy embedding column, an all-invalid partition,
    pixel lists through DLPack, image bytes from dask_cudf.read_parquet detected as bytes."""
    try:
        import cudf
        import dask_cudf
    except Exception as err:
        record["result"] = f"not available: {type(err).__name__}: {err}"[:300]
        report.check("cuDF: hand-offs", None, "cuDF not available on this machine")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from dask_clip import ImageEmbedder, backends
    from dask_clip.columns import LIST_FLOAT32
    from dask_clip.image.sources import detect_source

    emb = torch.randn(4, 8, device="cuda")
    column = backends.output_column(cudf.DataFrame(index=cudf.RangeIndex(4)), LIST_FLOAT32, emb, np.ones(4, bool))
    report.check(
        "cuDF: the embedding column is built on the tensor without a copy",
        column.list.leaves.values.data.ptr == emb.data_ptr(),
    )
    embedder = ImageEmbedder(**model["kwargs"], device="cuda")
    strings = pa.array([b"not an image", b"nor this"], pa.binary()).view(pa.string())
    out = embedder.embed_partition(cudf.DataFrame({"image": cudf.Series(strings)}))
    report.check("cuDF: a partition whose rows all fail gives null embeddings", bool(out["embedding"].isna().all()))
    pixels = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    lists = cudf.Series(pa.array([p.reshape(-1) for p in pixels], pa.list_(pa.uint8())))
    gdf = cudf.DataFrame({"image": lists, "height": [4] * 3, "width": [5] * 3})
    rows = detect_source(gdf["image"]).rows(gdf, "image", height_column="height", width_column="width")
    report.check(
        "cuDF: pixel lists reach torch through DLPack without a copy",
        rows[0].data_ptr() == gdf["image"].list.leaves.values.data.ptr,
    )
    path = Path(tmp) / "cudf-images.parquet"
    pq.write_table(pa.table({"image": pa.array(blobs[:8], pa.binary())}), path)
    ddf = dask_cudf.read_parquet(str(path))
    # real rows: _meta_nonempty's strings are placeholders, not the file's bytes
    report.check(
        "cuDF: image bytes from dask_cudf.read_parquet are detected as bytes",
        detect_source(ddf.partitions[0].compute()["image"]).kind == "bytes",
    )


# -- main ----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dry-run", "--cpu", dest="dry_run", action="store_true", help="CPU plumbing check: tiny model, few images"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for the JSON (default benchmarks/results; on a device loan: $OUT, which comes back)",
    )
    parser.add_argument("--budget", type=float, default=None, help="total seconds (default 450; dry run 120)")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every step's budget (the CPU dry run of the test suite, on a busy machine)",
    )
    parser.add_argument("--skip-pytest", action="store_true")
    args = parser.parse_args(argv)
    if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # workers import this module
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    import torch

    dry = args.dry_run or not torch.cuda.is_available()  # no CUDA context yet (see Cluster)
    total = args.budget or (120.0 if dry else 450.0)
    device = "cpu" if dry else "cuda"
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    report = Report(args.out / f"gpu-{'cpu-dryrun' if dry else 'pending'}-{date}.json", total, args.budget_scale)
    report.data.update(date=date, dry_run=dry, command=" ".join(sys.argv))
    if not args.dry_run and dry:
        report.data["note"] = "no CUDA device: ran as --dry-run"
    # Past the budget (plus a margin for the last write), leave with what was measured.
    watchdog = threading.Timer(
        total + 25, lambda: (report.data.update(watchdog="total budget exceeded"), report.write(), os._exit(3))
    )
    watchdog.daemon = True
    watchdog.start()

    threads = 2 if dry else 4  # num_gpus_per_worker=0.25: 4 task threads share the worker's model
    cluster = Cluster(dry, threads)
    with tempfile.TemporaryDirectory(prefix="dask-clip-gpu-check-") as tmp:
        if dry:
            from dask_clip.testing import write_model_dir

            tiny = {"model_dir": str(write_model_dir(Path(tmp) / "tiny"))}
            big = small = {"name": "tiny ViT (dry-run stand-in)", "kwargs": tiny}
            n_check, n_parity, sizes, batches = 24, 8, (96, 32), (8, 16)
        else:
            big = {"name": "ViT-L-14", "kwargs": {"model": "ViT-L-14", "pretrained": None}}
            small = {"name": "ViT-B-32", "kwargs": {"model": "ViT-B-32", "pretrained": None}}
            n_check, n_parity, sizes, batches = 160, 32, (None, 1024), (32, 256, 512)
        report.data.update(weights="random (pretrained=None): no network", models=[big["name"], small["name"]])

        # dask-cuda first: a broken install (e.g. an incompatible cuda-core) is the first thing
        # a fresh machine shows; the cluster then falls back and says so.
        with report.step("import dask_cuda", 15) as record:
            if record is not None:
                record.update(import_dask_cuda())
        # The cluster next: dask_clip.local_cluster refuses to start GPU workers once this
        # process has a CUDA context (they would all land on its GPU).
        with report.step("cluster", 45) as record:
            if record is not None:
                cluster.start()
                record.update(cluster.info)
        try:
            run_steps(report, cluster, args, dry, device, date, tmp, big, small, n_check, n_parity, sizes, batches)
        finally:
            cluster.close()

    report.data["total_seconds"] = round(time.monotonic() - report.started, 1)
    report.write()
    watchdog.cancel()
    summary = {"device": report.data["device"], "checks": report.data["checks"], "runs": report.data.get("runs")}
    print(json.dumps(summary, indent=2, default=str))
    print(f"[gpu_check] wrote {report.path}")
    if not dry and report.path.parent.resolve() != RESULTS.resolve():
        RESULTS.mkdir(parents=True, exist_ok=True)  # a copy in the checkout, to commit
        (RESULTS / report.path.name).write_text(report.path.read_text())
    failed = [k for k, v in report.data["steps"].items() if v.get("status") == "error"]
    return 1 if failed else 0


def run_steps(
    report: Report,
    cluster: Cluster,
    args: argparse.Namespace,
    dry: bool,
    device: str,
    date: str,
    tmp: str,
    big: dict[str, Any],
    small: dict[str, Any],
    n_check: int,
    n_parity: int,
    sizes: tuple[int | None, int],
    batches: tuple[int, ...],
) -> None:
    """Every step after the cluster's start, each in its own time budget."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from dask_clip import ImageEmbedder

    with report.step("environment", 15) as record:
        if record is not None:
            environment(report, record, cluster, dry)
            if not dry:
                report.move(args.out / f"gpu-{_slug(report.data['device'])}-{date}.json")
    if not args.skip_pytest:
        with report.step("pytest -m 'gpu or cudf'", 20 if dry else 60) as record:
            if record is not None:
                run_pytest(record, min(report.left(), 20 if dry else 60) - 2, dry)

    images: list[Any] = []
    web: list[Any] = []
    with report.step("images", 30) as record:
        if record is not None:
            images = make_images(n_check, 1, (320, 240), (800, 600) if dry else (4000, 3000))
            # end to end: web-size pictures, mostly baseline JPEGs, some that go to Pillow
            kinds = ("jpeg 4:2:0",) * 6 + ("jpeg 4:4:4", "progressive", "grayscale", "png")
            web = make_images(16 if dry else 256, 2, (400, 300), (1024, 768), kinds=kinds)
            record.update(
                check_images=len(images),
                end_to_end_distinct_images=len(web),
                mean_megapixels=round(float(np.mean([i.width * i.height for i in images])) / 1e6, 2),
            )
    with report.step("decode", 20 if dry else 30) as record:
        if record is not None:
            decode_checks(report, record, images, device, dry)
    with report.step("preprocess", 20) as record:
        if record is not None:
            # the dry run compares CPU with CPU: its plumbing needs no 108-megapixel image
            preprocess_checks(report, record, images, device, (3000, 2250) if dry else (12000, 9000))
    parity_blobs = [i.data for i in web if i.kind == "jpeg 4:2:0"][:n_parity]
    with report.step("parity", 30 if dry else 40) as record:
        if record is not None:
            parity_check(report, record, small, device, parity_blobs)

    model_only_rates: dict[str, dict[int, float]] = {}
    with report.step("model-only", 30 if dry else 50) as record:
        if record is not None:
            for precision in PRECISIONS:
                for batch in batches:
                    rate = model_only(big, device, precision, batch, 0.2 if dry else 3.0)
                    model_only_rates.setdefault(precision, {})[batch] = rate
                    record[f"{big['name']} {precision} b{batch}"] = rate
            record["fastest_precision"] = max(model_only_rates, key=lambda p: max(model_only_rates[p].values()))

    parquet = str(Path(tmp) / "distinct.parquet")
    pq.write_table(pa.table({"image": pa.array([i.data for i in web], type=pa.binary())}), parquet)
    runs = [(big, 8), (big, 16)] if dry else [(big, 32), (big, 256), (small, 256)]
    budget = 40 if dry else 85
    with report.step("end-to-end", budget, minimum=15) as record:
        if record is not None:
            if not dry:
                torch.cuda.empty_cache()  # hand the driver's cached blocks back for the worker
            left = min(report.left(), budget)
            end_to_end_runs(report, cluster, runs, big, model_only_rates, parquet, sizes, device, left)
    if not dry:
        with report.step("out-of-memory", 25) as record:
            if record is not None:
                oom_check(report, record, big, parity_blobs)
    with report.step("determinism", 20) as record:
        if record is not None:
            embedder = ImageEmbedder(**small["kwargs"], device=device)
            determinism_check(report, record, cluster, embedder, parity_blobs)
    with report.step("cudf", 15) as record:
        if record is not None:
            cudf_checks(report, record, small, parity_blobs, tmp)


if __name__ == "__main__":
    # Run as the module `benchmarks.gpu_check`, so the partition functions reach the workers by
    # reference (workers inherit PYTHONPATH) instead of being pickled from __main__.
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from benchmarks import gpu_check

    sys.exit(gpu_check.main())
