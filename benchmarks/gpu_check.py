"""GPU check: runs the GPU tests, measures GPU-vs-reference parity and model-only vs end-to-end
throughput, and writes everything it measured (and every error) to one JSON file.

On a GPU machine (no network; needs torch, torchvision, numpy, pandas, pyarrow, pillow plus the
pure-Python wheels in ./.whl, see docs/gpu.md)::

    python3 benchmarks/gpu_check.py                 # ~5 minutes on one H100/H200

Here, on CPU, to test the plumbing with a tiny model and a few images::

    python benchmarks/gpu_check.py --dry-run --out /tmp/results

Writes ``benchmarks/results/gpu-<gpu>-<date>.json`` with, per run, ``model``, ``batch_size``,
``model_only_img_s``, ``end_to_end_img_s``, and at the top level ``device`` and
``parity_rel_dist``. Each step has its own time budget and records its own error; the file is
rewritten after every step, so a failure or a kill still leaves what was measured. A figure
that was not measured is null, never estimated.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPU_TEST_FILES = ["tests/test_gpu.py", "tests/test_cudf.py", "tests/test_oom.py", "tests/test_device.py"]
# (model, batch size), in order of importance: the ViT-L-14 target comes first.
GPU_RUNS = [("ViT-L-14", 256), ("ViT-B-32", 512), ("ViT-L-14", 512)]


# -- images ----------------------------------------------------------------------------------


def photo_like(n: int, seed: int = 0, min_side: int = 240, max_side: int = 720) -> list[np.ndarray]:
    """Synthetic photo-like images: smooth multi-scale colour fields, hard-edged shapes (chroma
    edges, where JPEG decoders differ most) and sensor-like noise.

    Returns
    -------
    list of numpy.ndarray
        uint8 (H, W, 3), sides in [min_side, max_side].
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        field = np.zeros((h, w, 3), np.float32)
        for cells, amplitude in ((3, 90.0), (7, 45.0), (17, 20.0), (41, 8.0)):
            coarse = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
            for c in range(3):
                layer = Image.fromarray(coarse[:, :, c], mode="F").resize((w, h), Image.BICUBIC)
                field[:, :, c] += amplitude * np.asarray(layer)
        mix = np.eye(3, dtype=np.float32) * 0.6 + 0.4 * rng.random((3, 3), dtype=np.float32)
        image = Image.fromarray(np.clip(field @ mix.T + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = int(rng.integers(x0 + 4, w)), int(rng.integers(y0 + 4, h))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        noisy = np.asarray(image, np.float32) + rng.normal(0, 4, (h, w, 3))
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def sample_photos(n: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Crops of scikit-image's photographs where it is installed, else :func:`photo_like`.

    Returns
    -------
    (images, source)
        uint8 (H, W, 3) images and ``"scikit-image photos"`` or ``"synthetic photo-like"``.
    """
    from dask_clip.testing import photo_crops

    try:
        return photo_crops(n, seed=seed, min_size=(320, 240)), "scikit-image photos"
    except ImportError:
        return photo_like(n, seed), "synthetic photo-like"


def jpeg(image: np.ndarray, quality: int = 90, **save: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, **save)
    return buffer.getvalue()


# -- budgets and the report --------------------------------------------------------------------


class StepTimeout(Exception):
    """A step ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (between bytecodes)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StepTimeout(f"step ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """The JSON result, rewritten after every step."""

    def __init__(self, path: Path, total_budget: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.total_budget = total_budget
        self.data: dict[str, Any] = {"device": None, "parity_rel_dist": None, "runs": [], "steps": {}}
        self._lock = threading.Lock()

    def left(self) -> float:
        return self.total_budget - (time.monotonic() - self.started)

    def move(self, path: Path) -> None:
        with self._lock:
            if self.path.exists():
                self.path.replace(path)
            self.path = path

    def write(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.path)

    @contextlib.contextmanager
    def step(self, name: str, budget: float, minimum: float = 5.0) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"status": "running", "budget_s": round(budget, 1)}
        self.data["steps"][name] = record
        budget = min(budget, self.left())
        started = time.monotonic()
        if budget < minimum:
            record.update(status="skipped", error=f"out of time: {self.left():.0f} s left of the total budget")
            self.write()
            yield record
            return
        self.write()
        try:
            with time_budget(budget):
                yield record
            record["status"] = "ok"
        except Exception as err:
            record.update(
                status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:]
            )
            print(f"[gpu_check] {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            self.write()


def _run_body(record: dict[str, Any]) -> bool:
    return record.get("status") != "skipped"


# -- steps ---------------------------------------------------------------------------------------


def environment(cpu: bool) -> dict[str, Any]:
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
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    else:
        env["device"] = "cpu"
    for name in ("dask", "distributed", "open_clip", "dask_cuda", "cudf", "cupy", "pytest"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "installed")
        except Exception as err:
            env[name] = f"unavailable ({type(err).__name__}: {err})"[:200]
    return env


def run_pytest(record: dict[str, Any], budget: float, dry_run: bool) -> None:
    try:
        import pytest  # noqa: F401
    except ImportError:
        record.update(result="pytest is not installed: GPU tests not run")
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    files = ["tests/test_device.py"] if dry_run else GPU_TEST_FILES
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *files]
    record["command"] = " ".join(command[1:])
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget, check=False)
    except subprocess.TimeoutExpired as err:
        record.update(result=f"timed out after {budget:.0f} s", output_tail=str(err.stdout or "")[-3000:])
        raise StepTimeout(f"pytest ran past {budget:.0f} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = next(
        (
            line.strip("= ")
            for line in reversed(lines)
            if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)
        ),
        "",
    )
    record.update(returncode=proc.returncode, result=summary)
    if proc.returncode not in (0, 5):  # 5: nothing collected/selected
        record["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"GPU tests failed: {summary}")


def parity_check(record: dict[str, Any], model: dict[str, Any], device: str, n: int) -> float:
    """docs/design.md parity of dask_clip on ``device`` against open_clip's CPU reference pipeline."""
    import copy

    import open_clip
    import pandas as pd
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from dask_clip import ImageEmbedder
    from dask_clip.columns import embeddings_to_numpy
    from dask_clip.models import get_model
    from dask_clip.testing import parity

    photos, source = sample_photos(n, seed=1)
    blobs = [jpeg(p) for p in photos]
    record.update(images=n, image_source=source, model=model["name"])
    base = ImageEmbedder(**model["kwargs"], device=device, precision="fp32", decode_device="cpu")
    cpu_model = copy.deepcopy(get_model(base.spec).model).float().cpu().eval()
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(cpu_model)), is_train=False)
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        reference = torch.nn.functional.normalize(cpu_model.encode_image(batch), dim=-1).numpy()
    del cpu_model
    frame = pd.DataFrame({"image": blobs})
    # On CUDA, decode_device="auto" is nvJPEG and precision="auto" is bf16 (fp16 without bf16);
    # on CPU both are the reference choices (Pillow, fp32).
    variants = {
        "decode_device=auto, precision=auto (default)": dataclasses.replace(
            base, precision="auto", decode_device="auto"
        ),
        "decode_device=auto, precision=fp32": dataclasses.replace(base, decode_device="auto"),
        "decode_device=cpu, precision=auto": dataclasses.replace(base, precision="auto"),
        "decode_device=cpu, precision=fp32 (device resize only)": base,
    }
    figures = {}
    for name, embedder in variants.items():
        out = embedder.embed_partition(frame)
        rel = parity(embeddings_to_numpy(out["embedding"]), reference)
        figures[name] = {"max": round(float(rel.max()), 5), "median": round(float(np.median(rel)), 5)}
        record["variants"] = figures
    return figures["decode_device=auto, precision=auto (default)"]["max"]


def stage_rates(record: dict[str, Any], model: dict[str, Any], device: str, blobs: list[bytes], batch: int) -> None:
    """Images/s of decode alone and of decode + preprocess, single thread (diagnostics)."""
    import torch

    from dask_clip import ImageEmbedder
    from dask_clip.decode import PILLOW
    from dask_clip.models import get_model
    from dask_clip.preprocess import preprocess_batch

    loaded = get_model(ImageEmbedder(**model["kwargs"], device=device).spec)
    rows = (blobs * (batch // len(blobs) + 1))[:batch]

    def decode() -> list:
        if loaded.device.type == "cuda":
            from dask_clip.gpu_decode import NvjpegDecoder

            return NvjpegDecoder(loaded.device).decode(rows, max_pixels=None)
        return PILLOW.decode(rows, max_pixels=None)

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    decode()
    for name, work in (
        ("decode_img_s", decode),
        (
            "decode_preprocess_img_s",
            lambda: preprocess_batch(
                [p if isinstance(p, torch.Tensor) else torch.from_numpy(np.array(p)) for p, _ in decode()],
                loaded.preprocess,
                loaded.device,
            ),
        ),
    ):
        sync()
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0 or done == 0:
            work()
            done += len(rows)
        sync()
        record[name] = round(done / (time.perf_counter() - started), 1)
    record["batch"] = batch


def model_only(model: dict[str, Any], device: str, batch: int, seconds: float) -> float:
    """Images/s of ``encode_image`` on preprocessed input already on the device (autocast as the
    embedder runs it), after warm-up."""
    import torch

    from dask_clip import ImageEmbedder
    from dask_clip.models import get_model

    loaded = get_model(ImageEmbedder(**model["kwargs"], device=device).spec)
    x = torch.randn(batch, 3, *loaded.preprocess.size, device=loaded.device)
    dtype = loaded.autocast_dtype
    with (
        torch.inference_mode(),
        torch.autocast(loaded.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        for _ in range(2):
            loaded.model.encode_image(x)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds or done < 3 * batch:
            loaded.model.encode_image(x)
            done += batch
            if loaded.device.type == "cuda" and done % (4 * batch) == 0:
                torch.cuda.synchronize()  # keep the clock honest without stalling every batch
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


@functools.lru_cache(maxsize=4)
def _distinct_images(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("image").combine_chunks()


def tiled_partition(path: str, rows: int, number: int) -> Any:
    """One pandas partition of ``rows`` JPEGs (binary), tiled from a small Parquet file of
    distinct images, read once per worker process."""
    import pandas as pd
    import pyarrow as pa

    images = _distinct_images(path)
    take = pa.array((np.arange(rows) + number * 7) % len(images))
    index = pd.RangeIndex(number * rows, (number + 1) * rows)
    return pd.DataFrame({"image": pd.arrays.ArrowExtensionArray(images.take(take))}, index=index)


def _summary(df: Any, error_column: str) -> Any:
    import pandas as pd

    return pd.DataFrame({"rows": [len(df)], "failed": [int(df[error_column].notna().sum())]})


class Cluster:
    """One worker for the whole check, tried in order: dask_clip's own ``local_cluster`` (the
    product's configuration: LocalCUDACluster, RMM async, torch on RMM), a bare
    LocalCUDACluster, a LocalCluster whose worker uses ``device="cuda"``.

    Start it before this process touches CUDA (``local_cluster`` refuses otherwise)."""

    def __init__(self, cpu: bool, num_gpus_per_worker: float) -> None:
        self.cpu = cpu
        self.threads = 1 if cpu else round(1 / num_gpus_per_worker)
        self.num_gpus_per_worker = num_gpus_per_worker
        self.cluster = self.client = None
        self.info: dict[str, Any] = {}

    def start(self) -> Any:
        if self.client is not None:
            return self.client
        from distributed import Client, LocalCluster

        from dask_clip import local_cluster

        errors = {}
        attempts = [
            (
                "dask_clip.local_cluster",
                lambda: local_cluster(
                    "cpu" if self.cpu else "cuda",
                    n_workers=1,
                    num_gpus_per_worker=self.num_gpus_per_worker,
                    threads_per_worker=self.threads,
                    dashboard_address="127.0.0.1:0",
                ),
            ),
        ]
        options = {"n_workers": 1, "threads_per_worker": self.threads, "dashboard_address": "127.0.0.1:0"}
        if not self.cpu:
            attempts.append(("dask_cuda.LocalCUDACluster", lambda: __import__("dask_cuda").LocalCUDACluster(**options)))
        attempts.append(("distributed.LocalCluster", lambda: LocalCluster(processes=True, host="127.0.0.1", **options)))
        for name, start in attempts:
            try:
                self.cluster = start()
                break
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"[:400]
        if self.cluster is None:
            raise RuntimeError(f"no cluster could start: {errors}")
        self.info = {
            "cluster": name,
            "threads_per_worker": self.threads,
            **({"cluster_errors": errors} if errors else {}),
        }
        self.client = Client(self.cluster)
        return self.client

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            with contextlib.suppress(Exception):
                thing.close()


def end_to_end(
    cluster: Cluster,
    model: dict[str, Any],
    device: str,
    batch: int,
    parquet: str,
    images: int,
    rows_per_partition: int,
    timeout: float,
) -> dict[str, Any]:
    """Images/s from JPEG bytes in pandas partitions to embeddings on the worker(s)."""
    import dask.dataframe as dd
    import pandas as pd

    from dask_clip import ImageEmbedder

    client = cluster.start()
    embedder = ImageEmbedder(**model["kwargs"], device=device, model_inference_batch_size=batch)
    meta = tiled_partition(parquet, 0, 0)
    partitions = max(1, images // rows_per_partition)

    def job(n_parts: int) -> Any:
        ddf = dd.from_map(
            tiled_partition, [parquet] * n_parts, [rows_per_partition] * n_parts, list(range(n_parts)), meta=meta
        )
        out = embedder(ddf)
        return out.map_partitions(
            _summary, embedder.error_column, meta=pd.DataFrame({"rows": [0], "failed": [0]}).iloc[:0]
        )

    started = time.perf_counter()
    client.compute(job(1)).result(timeout=timeout)  # loads the model on the worker; not timed
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
        "end_to_end_seconds": round(seconds, 2),
        "first_partition_with_model_load_s": round(load_s, 2),
    }


# -- main ----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run",
        "--cpu",
        dest="dry_run",
        action="store_true",
        help="CPU plumbing check: tiny model, few images, LocalCluster",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON (default benchmarks/results)")
    parser.add_argument("--budget", type=float, default=None, help="total seconds (default 330; dry run 100)")
    parser.add_argument("--skip-pytest", action="store_true")
    args = parser.parse_args(argv)
    if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # workers import this module
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    import torch

    dry = args.dry_run or not torch.cuda.is_available()  # no CUDA context yet (see Cluster)
    total = args.budget or (100.0 if dry else 330.0)
    device = "cpu" if dry else "cuda"
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    report = Report(args.out / f"gpu-{'cpu-dryrun' if dry else 'pending'}-{date}.json", total)
    report.data.update(date=date, dry_run=dry, device=device if dry else None, command=" ".join(sys.argv))
    if not args.dry_run and dry:
        report.data["note"] = "no CUDA device: ran as --dry-run"
    # Past the budget (plus a margin for the last write), leave with what was measured.
    watchdog = threading.Timer(
        total + 25, lambda: (report.data.update(watchdog="total budget exceeded; exited"), report.write(), os._exit(3))
    )
    watchdog.daemon = True
    watchdog.start()

    with tempfile.TemporaryDirectory(prefix="dask-clip-gpu-check-") as tmp:
        if dry:
            from dask_clip.testing import write_model_dir

            tiny = {
                "name": "tiny ViT (dry-run stand-in)",
                "kwargs": {"model_dir": str(write_model_dir(Path(tmp) / "tiny"))},
            }
            runs = [(tiny, 8), (tiny, 16)]
            parity_model, parity_images, e2e_images, rows_per_partition = tiny, 6, 48, 16
        else:
            runs = [({"name": m, "kwargs": {"model": m, "pretrained": None}}, b) for m, b in GPU_RUNS]
            parity_model = {"name": "ViT-B-32", "kwargs": {"model": "ViT-B-32", "pretrained": None}}
            parity_images, e2e_images, rows_per_partition = 32, None, 1024
        report.data.update(
            weights="random (pretrained=None): no network", precision="auto (bf16 on GPU)", num_gpus_per_worker=0.25
        )

        # The cluster first: dask_clip.local_cluster refuses to start GPU workers once this
        # process has a CUDA context (they would all land on its GPU).
        cluster = Cluster(dry, num_gpus_per_worker=0.25)
        with report.step("cluster", 90) as record:
            if _run_body(record):
                cluster.start()
                record.update(cluster.info)

        with report.step("environment", 60) as record:
            env = environment(dry)
            record.update(env)
            report.data["device"] = env["device"]
            report.data["environment"] = env
            if not dry:
                report.move(args.out / f"gpu-{_slug(env['device'])}-{date}.json")

        if not args.skip_pytest:
            with report.step("pytest -m gpu", 20 if dry else 120) as record:
                if _run_body(record):
                    run_pytest(record, min(report.left(), 20 if dry else 120) - 2, dry)

        with report.step("parity", 40 if dry else 75) as record:
            if _run_body(record):
                report.data["parity_rel_dist"] = parity_check(record, parity_model, device, parity_images)
                report.data["parity"] = {k: v for k, v in record.items() if k not in ("status", "budget_s")}

        photos, source = sample_photos(8 if dry else 64, seed=2)
        blobs = [jpeg(p, quality=85) for p in photos]
        parquet = str(Path(tmp) / "distinct.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image": pa.array(blobs, type=pa.binary())}), parquet)
        report.data["end_to_end_input"] = {
            "distinct_jpegs": len(blobs),
            "image_source": source,
            "mean_jpeg_kb": round(float(np.mean([len(b) for b in blobs])) / 1024, 1),
            "mean_pixels": int(np.mean([p.shape[0] * p.shape[1] for p in photos])),
        }

        with report.step("decode/preprocess rates", 20) as record:
            if _run_body(record):
                stage_rates(record, parity_model, device, blobs, runs[0][1])  # the loaded model's preprocessing

        try:
            for model, batch in runs:
                run: dict[str, Any] = {
                    "model": model["name"],
                    "batch_size": batch,
                    "model_only_img_s": None,
                    "end_to_end_img_s": None,
                }
                report.data["runs"].append(run)
                with report.step(f"model-only {model['name']} b{batch}", 25 if dry else 60) as record:
                    if _run_body(record):
                        run["model_only_img_s"] = round(model_only(model, device, batch, 2.0 if dry else 6.0), 1)
                with report.step(f"end-to-end {model['name']} b{batch}", 45 if dry else 90, minimum=15) as record:
                    if _run_body(record):
                        if not dry:  # hand the driver's cached activations back for the worker
                            torch.cuda.empty_cache()
                        rate = run["model_only_img_s"] or 1000.0
                        wanted = e2e_images or int(
                            min(32768, max(4096, rate * 6)) // rows_per_partition * rows_per_partition
                        )
                        left = min(report.left(), 45 if dry else 90) - 2
                        run.update(end_to_end(cluster, model, device, batch, parquet, wanted, rows_per_partition, left))
                        run.update(cluster.info)
                if run["model_only_img_s"] and run["end_to_end_img_s"]:
                    run["end_to_end_over_model_only"] = round(run["end_to_end_img_s"] / run["model_only_img_s"], 3)
                report.write()
        finally:
            cluster.close()

    report.data["targets"] = _targets(report.data, dry)
    report.data["total_seconds"] = round(time.monotonic() - report.started, 1)
    report.write()
    watchdog.cancel()
    print(
        json.dumps({k: report.data[k] for k in ("device", "parity_rel_dist", "runs", "targets")}, indent=2, default=str)
    )
    print(f"[gpu_check] wrote {report.path}")
    failed = [k for k, v in report.data["steps"].items() if v.get("status") == "error"]
    return 1 if failed else 0


def _targets(data: dict[str, Any], dry: bool) -> dict[str, Any]:
    """Targets against measured figures only (null where the figure is missing)."""
    if dry:
        return {"note": "dry run on CPU: targets are for one H100"}
    ratios = [r["end_to_end_over_model_only"] for r in data["runs"] if r.get("end_to_end_over_model_only")]
    vit_l = [r["end_to_end_img_s"] for r in data["runs"] if r["model"] == "ViT-L-14" and r["end_to_end_img_s"]]
    parity = data.get("parity_rel_dist")
    return {
        "end_to_end >= 0.9 x model_only (every measured run)": all(r >= 0.9 for r in ratios) if ratios else None,
        "ViT-L-14 end-to-end >= 2500 img/s (target set for one H100)": max(vit_l) >= 2500 if vit_l else None,
        "parity <= 0.01": None if parity is None else parity <= 0.01,
        "device": data.get("device"),
    }


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Run as the module `benchmarks.gpu_check`, so the partition functions reach the workers by
    # reference (workers inherit PYTHONPATH) instead of being pickled from __main__.
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from benchmarks import gpu_check

    sys.exit(gpu_check.main())
