"""Peak worker memory on partitions of huge images, through ``dask-clip embed`` as users run it.

    python benchmarks/bench_memory.py [--rows 256] [--model ViT-B-32] [--threads-per-worker 1]

Two inputs, each one Parquet folder of 256-row partitions:

- **12 MP photos**: 4000 x 3000 JPEGs (quality 90, 8 distinct photo-like images repeated),
  about 2 MB each: 2 partitions.
- **the 9000 x 9900 PNG** of the robustness issue: a 260 KB file that decodes to 267 MB of RGB,
  just under Pillow's decompression-bomb limit (89.5 MP) and the default decode budget
  (``max_decode_bytes``, 256 MiB): 1 partition.

Each input is embedded by the CLI in a subprocess (its own local cluster of worker processes,
defaults otherwise: ViT-B-32 with random weights, batch 32). The RSS of every process of the
run is sampled every 0.1 s (psutil); the worker's peak is compared with the budget documented
in docs/robustness.md: the worker's RSS once the model is loaded, plus what its tasks hold
(each task's partition of encoded bytes, and per decode thread one full-size image and its
resize at most ``4 x max_decode_bytes``, plus the chunk's crops). Writes
benchmarks/results/memory-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
MiB = 2**20


def photo_jpegs(distinct: int = 8) -> list[bytes]:
    """4000 x 3000 photo-like JPEGs (quality 90)."""
    from PIL import Image

    from dask_clip.testing import photo_crops

    out = []
    for crop in photo_crops(distinct, seed=3):
        image = Image.fromarray(crop).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def huge_png() -> bytes:
    """9000 x 9900 RGB PNG of flat bands with a little texture: ~260 KB encoded, 267 MB decoded."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (9000, 9900), (200, 180, 160))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    for _ in range(400):
        x, y = int(rng.integers(0, 8900)), int(rng.integers(0, 9800))
        draw.rectangle((x, y, x + 100, y + 100), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_folder(folder: Path, blobs: list[bytes], rows: int, partitions: int) -> dict[str, Any]:
    folder.mkdir(parents=True)
    for p in range(partitions):
        column = pa.array([blobs[(p * rows + i) % len(blobs)] for i in range(rows)], pa.binary())
        pq.write_table(pa.table({"jpg": column}), folder / f"{p:05d}.parquet")
    return {
        "partitions": partitions,
        "rows_per_partition": rows,
        "encoded_mib_per_partition": round(sum(len(blobs[i % len(blobs)]) for i in range(rows)) / MiB, 1),
        "encoded_kib_per_image": round(float(np.mean([len(b) for b in blobs])) / 1024, 1),
    }


class RssSampler:
    """Peak RSS per process of a process tree, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, dict[str, Any]] = {}
        self.samples: list[tuple[float, int]] = []  # (seconds, largest process RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.perf_counter()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            largest = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline())[:120]
                except psutil.Error:
                    continue
                largest = max(largest, rss)
                seen = self.peaks.setdefault(proc.pid, {"cmd": cmd, "peak": 0})
                seen["peak"] = max(seen["peak"], rss)
            self.samples.append((time.perf_counter() - self.started, largest))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_case(folder: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``dask-clip embed`` on one folder; the worker's peak RSS and its RSS with the model loaded."""
    cmd = [
        sys.executable,
        "-m",
        "dask_clip.cli",
        "embed",
        str(folder),
        str(out),
        "--model",
        args.model,
        "--random-weights",
        "--image-column",
        "jpg",
        "--threads-per-worker",
        str(args.threads_per_worker),
        "--dashboard-address",
        "none",
        "-v",
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with RssSampler(proc.pid) as sampler:
        output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    workers = {pid: p for pid, p in sampler.peaks.items() if "distributed" in p["cmd"] or "spawn" in p["cmd"]}
    worker_peak = max((p["peak"] for p in workers.values()), default=0)
    import pandas as pd

    table = pd.read_parquet(out, columns=["embedding_error"])
    return {
        "seconds": round(seconds, 1),
        "rows": len(table),
        "row_errors": int(table["embedding_error"].notna().sum()),
        "error_reasons": table["embedding_error"].dropna().value_counts().to_dict(),
        "worker_peak_rss_mib": round(worker_peak / MiB),
        "largest_process_peak_rss_mib": round(max(p["peak"] for p in sampler.peaks.values()) / MiB),
        "processes": {
            str(pid): {"cmd": p["cmd"], "peak_rss_mib": round(p["peak"] / MiB)} for pid, p in sampler.peaks.items()
        },
        "log_tail": output.strip().splitlines()[-6:],
    }


def model_loaded_rss(model: str) -> float:
    """RSS (MiB) of a fresh process that imported dask_clip and loaded the model: the worker's floor."""
    code = (
        "import resource, dask_clip, distributed;"
        "from dask_clip.models import get_model; from dask_clip.models.spec import ModelSpec;"
        f"get_model(ModelSpec(model={model!r}, pretrained=None));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    kib = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    return int(kib) / 1024


def budget_mib(floor_mib: float, encoded_mib: float, tasks: int, decode_threads: int) -> float:
    """docs/robustness.md's worker budget: the loaded model, then per task its partition's encoded
    bytes, 4 x max_decode_bytes per decode thread (one image in Pillow's 4-byte RGB storage, its
    pre-reduction and resize temporaries), and a chunk of crops (256 x 3 x 224 x 224) as uint8
    and float32."""
    from dask_clip.image.decode import DEFAULT_DECODE_BUDGET

    crops = 256 * 3 * 224 * 224 * (1 + 4) / MiB
    per_task = encoded_mib + decode_threads * 4 * DEFAULT_DECODE_BUDGET / MiB + crops
    return floor_mib + tasks * per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="rows per partition")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="tasks at once in the worker")
    args = parser.parse_args()
    from dask_clip.runtime.cluster import cpu_count

    cores = cpu_count()
    result: dict[str, Any] = {
        "benchmark": "memory: peak worker RSS on partitions of huge images (dask-clip embed)",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cores} cores",
        "model": args.model,
        "weights": "random",
        "threads_per_worker": args.threads_per_worker,
    }
    floor = model_loaded_rss(args.model)
    result["model_loaded_rss_mib"] = round(floor)
    decode_threads = max(1, cores // args.threads_per_worker)  # serial schedule: one per torch thread
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = {
            "12 MP JPEG": (photo_jpegs(), 2),
            "9000x9900 PNG": ([huge_png()], 1),
        }
        result["cases"] = {}
        for name, (blobs, partitions) in cases.items():
            folder = tmp / name.replace(" ", "_")
            case: dict[str, Any] = {"input": write_folder(folder, blobs, args.rows, partitions)}
            case.update(run_case(folder, tmp / f"{folder.name}-out", args))
            case["budget_mib"] = round(
                budget_mib(floor, case["input"]["encoded_mib_per_partition"], args.threads_per_worker, decode_threads)
            )
            case["within_budget"] = case["worker_peak_rss_mib"] <= case["budget_mib"]
            result["cases"][name] = case
            print(name, json.dumps({k: v for k, v in case.items() if k not in ("processes", "log_tail")}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"memory-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    main()
