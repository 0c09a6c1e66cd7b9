"""Whole-process ``dask-clip embed`` against model-only, before/after a change, and against
clip-retrieval's ``clip inference``, on the same photos and the same seeded weights.

    python benchmarks/bench_whole_process.py [--photos 400] [--rounds 2] [--before /path/to/old/tree]
        [--clip-retrieval /tmp/cr-venv/bin/clip-retrieval]

Inputs: ``--photos`` JPEG photos (``bench_cpu.photo_folder``: 320x240 to 1600x1200) and a folder
of seeded random ViT-B-32 weights (``dask_clip.testing.write_model_dir``, seed 0). Each round
runs, one after the other (interleaved, so every figure of a round sees the same machine):

- ``model-only``: images/s of the model alone in this process (random preprocessed input,
  ``--batch-size``, torch on every core), the reference of every ratio;
- ``dask-clip embed``: ``python -m dask_clip.cli embed PHOTOS OUT --model-dir M --batch-size B``
  in a fresh process, with this tree's ``dask_clip`` (``after``) and, given ``--before``, with an
  older tree's (``before``, e.g. ``git archive COMMIT | tar -x -C DIR``);
- ``dask-clip embed (after, running cluster)`` (given ``--running-cluster``): the same command with
  ``--scheduler-file`` against a cluster started once before the rounds (``dask scheduler`` and
  ``dask worker --preload dask_clip.worker_setup``, one worker process with one thread, as the
  CLI's local cluster has here) that
  has run one warm-up job: the notebook or multi-job case, whose fixed cost is the command's own
  (imports, planning, writing, exit) and not the worker's start;
- ``clip-retrieval inference`` (given its executable): ``--input_dataset PHOTOS --clip_model
  open_clip:ViT-B-32//M/open_clip_model.safetensors --batch_size B --enable_text False``, its
  other options at their defaults (4 preprocessing workers, no JIT); all_clip passes the path
  to open_clip as the checkpoint, so the weights are the same file.

Each whole process is timed from outside (imports, cluster or DataLoader workers, model load,
warm-up, reading, decoding, inference, writing, exit). Its ``fixed_s`` is its seconds minus
what the model alone would take for the photos (photos / model-only images/s) in the same
round. The load average is recorded after every run: the machine may be shared, so compare the
figures of one round, and ratios rather than seconds. The JSON is rewritten after every run
(``benchmarks/results/whole-process-<model>-<date>.json``), so an interrupted run keeps its rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def model_only(model_dir: Path, batch: int, seconds: float) -> float:
    """Images/s of the model alone, in this process (as a worker runs it: encode_inputs)."""
    import torch

    from dask_clip.embed.infer import encode_inputs
    from dask_clip.models import get_model
    from dask_clip.models.spec import ModelSpec

    torch.set_num_threads(os.cpu_count() or 1)
    loaded = get_model(ModelSpec(model_dir=str(model_dir), device="cpu"))
    crops = torch.randint(0, 256, (batch, 3, *loaded.preprocess.size), dtype=torch.uint8)
    encode_inputs(loaded, crops, batch_size=batch)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or done < 2 * batch:
        encode_inputs(loaded, crops, batch_size=batch)
        done += batch
    return done / (time.perf_counter() - started)


def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, (proc.stdout + proc.stderr).strip()[-400:]


def start_cluster(scheduler_file: Path, cwd: Path) -> list[subprocess.Popen]:
    """``dask scheduler`` and one ``dask worker`` (one process, one thread) with this tree's
    package, started and connected; returns both processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    log = (cwd / "cluster.log").open("w")  # its INFO lines, out of the way
    scheduler = [*dask_cli, "--scheduler-file", str(scheduler_file), "--port", "0", "--no-dashboard"]
    procs = [subprocess.Popen(scheduler, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file)]
    # as docs/clusters.md starts workers for the CLI: the preload sets torch's threads (cores / task threads)
    worker += ["--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--preload", "dask_clip.worker_setup"]
    procs.append(subprocess.Popen(worker, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
        client.wait_for_workers(1, timeout=120)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-only-seconds", type=float, default=8.0)
    parser.add_argument("--before", help="a tree with an older dask_clip package, for the before figure")
    parser.add_argument("--clip-retrieval", help="the clip-retrieval executable (its own environment)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/whole-process-MODEL-DATE.json)")
    parser.add_argument(
        "--running-cluster",
        action="store_true",
        help="also time the command against a cluster started once before the rounds (--scheduler-file)",
    )
    parser.add_argument(
        "--inputs",
        help="a folder holding photos/ and model/ as an earlier run wrote them, read instead of writing them again "
        "(600 MB for ViT-B-32)",
    )
    args = parser.parse_args()

    import open_clip

    from benchmarks.bench_cpu import photo_folder
    from dask_clip.testing import write_model_dir

    date = dt.date.today().isoformat()
    path = Path(args.out) if args.out else RESULTS / f"whole-process-{args.model}-{date}.json"
    tmp = Path(tempfile.mkdtemp(prefix="bench-whole-"))
    inputs = Path(args.inputs) if args.inputs else tmp
    photos, model_dir = inputs / "photos", inputs / "model"
    result: dict[str, Any] = {
        "benchmark": "whole process vs model-only; dask-clip embed before/after; clip-retrieval inference",
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "model": f"{args.model}, seeded random weights (write_model_dir seed 0) in an open_clip folder",
        "batch_size": args.batch_size,
        "inputs": photo_folder(photos, args.photos) if not args.inputs else {"images": len(list(photos.iterdir()))},
        "rounds": [],
    }
    if not args.inputs:
        write_model_dir(model_dir, model_cfg=open_clip.get_model_config(args.model))
    trees = {"after": str(ROOT)}
    if args.before:
        trees["before"] = str(Path(args.before).resolve())
    cluster: list[subprocess.Popen] = []
    try:
        scheduler_file = tmp / "scheduler.json"
        if args.running_cluster:
            cluster = start_cluster(scheduler_file, tmp)
            few = tmp / "warm-up-photos"  # a small job first: the worker loads and keeps the model
            few.mkdir()
            for photo in sorted(photos.iterdir())[:8]:
                shutil.copy(photo, few / photo.name)
            warm_up = [sys.executable, "-m", "dask_clip.cli", "embed", str(few), str(tmp / "out-warm-up")]
            warm_up += ["--model-dir", str(model_dir), "--batch-size", str(args.batch_size)]
            warm_up += ["--no-progress", "--scheduler-file", str(scheduler_file)]
            run(warm_up, {**os.environ, "PYTHONPATH": str(ROOT)}, tmp)
        for round_no in range(args.rounds):
            entry: dict[str, Any] = {"round": round_no}
            result["rounds"].append(entry)
            rate = model_only(model_dir, args.batch_size, args.model_only_seconds)
            entry["model_only_img_s"] = round(rate, 2)
            entry["load_after_model_only"] = round(os.getloadavg()[0], 2)
            runs: list[tuple[str, list[str], dict[str, str]]] = []
            for name, tree in trees.items():
                command = [sys.executable, "-m", "dask_clip.cli", "embed", str(photos), str(tmp / f"out-{name}")]
                command += ["--model-dir", str(model_dir), "--batch-size", str(args.batch_size)]
                command += ["--overwrite", "--no-progress"]
                runs.append((f"dask-clip embed ({name})", command, {**os.environ, "PYTHONPATH": tree}))
            if args.running_cluster:
                command = [sys.executable, "-m", "dask_clip.cli", "embed", str(photos), str(tmp / "out-running")]
                command += ["--model-dir", str(model_dir), "--batch-size", str(args.batch_size)]
                command += ["--overwrite", "--no-progress", "--scheduler-file", str(scheduler_file)]
                runs.append(
                    ("dask-clip embed (after, running cluster)", command, {**os.environ, "PYTHONPATH": str(ROOT)})
                )
            if args.clip_retrieval:
                command = [args.clip_retrieval, "inference", "--input_dataset", str(photos)]
                command += ["--output_folder", str(tmp / "out-clip-retrieval")]
                command += ["--clip_model", f"open_clip:{args.model}/{model_dir / 'open_clip_model.safetensors'}"]
                command += ["--batch_size", str(args.batch_size), "--enable_text", "False"]
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                runs.append(("clip-retrieval inference", command, {**env, "HF_HUB_OFFLINE": "1"}))
            if round_no % 2:
                runs.reverse()  # neither side always runs first
            for name, command, env in runs:
                shutil.rmtree(tmp / "out-clip-retrieval", ignore_errors=True)
                seconds, tail = run(command, env, tmp)
                img_s = args.photos / seconds
                entry[name] = {
                    "seconds": round(seconds, 2),
                    "img_s": round(img_s, 2),
                    "ratio_to_model_only": round(img_s / rate, 3),
                    "fixed_s": round(seconds - args.photos / rate, 2),
                    "load_after": round(os.getloadavg()[0], 2),
                    "output_tail": tail[-200:],
                }
                if round_no == 0:
                    entry[name]["command"] = " ".join(command).replace(str(tmp), "TMP")
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(name, entry[name]["seconds"], "s", entry[name]["ratio_to_model_only"], flush=True)
    finally:
        for proc in reversed(cluster):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"-> {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
