"""The fixed-cost timeline of one ``dask-clip embed`` process: when each process of the run
appears and ends, when it imports the heavy packages, what the command prints, and the CPU
seconds of each process, for this tree and (``--before``) an older one, interleaved.

    python benchmarks/startup_timeline.py [--photos 32] [--rounds 1] [--before /path/to/old/tree]

Inputs: ``--photos`` JPEG photos (``bench_cpu.photo_folder``) and a folder of seeded random
ViT-B-32 weights, batch 32 (one partition: the whole job is start-up, one batch and the close).
Every process of the run gets a ``sitecustomize`` (on ``PYTHONPATH``) that logs its start, its
``atexit`` and the first import of torch, torchvision, open_clip, distributed, pandas ... (as
``builtins.__import__`` sees them: modules imported with ``importlib.import_module`` — the fork
server's — show only their nested imports). A thread polls ``/proc`` every 50 ms for the run's
processes (found by an environment variable), their lifetimes and CPU seconds (the last sample
before a process ends, so slightly low). The run is from ``/tmp``, so that ``python -m`` imports
the tree's package, not the current directory's. Output: the merged timeline, and a JSON
(``benchmarks/results/startup-timeline-DATE.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "DASK_CLIP_TIMELINE_T0"
HOOK = """
import atexit, builtins, os, sys, time
_t0 = os.environ.get("DASK_CLIP_TIMELINE_T0")
if _t0:
    _t0, _log = float(_t0), os.environ["DASK_CLIP_TIMELINE_LOG"]
    def _w(msg):
        with open(_log, "a") as f:
            f.write(f"{time.time() - _t0:.3f} pid={os.getpid()} {msg}\\n")
    _w("start " + " ".join(sys.argv[:3])[:80])
    atexit.register(lambda: _w("atexit"))
    _orig, _seen = builtins.__import__, set()
    _heavy = {"torch", "torchvision", "open_clip", "distributed", "pandas", "pyarrow", "scipy", "transformers"}
    def _imp(name, *a, **k):
        top = name.split(".")[0]
        if top in _heavy and top not in _seen and top not in sys.modules:
            _seen.add(top)
            _w(f"import {top} begin")
            try:
                return _orig(name, *a, **k)
            finally:
                _w(f"import {top} end")
        return _orig(name, *a, **k)
    builtins.__import__ = _imp
"""


def timeline(tree: str, photos: Path, model_dir: Path, work: Path, batch: int) -> dict:
    """One run of ``dask-clip embed`` with ``tree``'s package; its events and CPU seconds."""
    hook, log, out = work / "hook", work / "log.txt", work / "out"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    log.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    env = {**os.environ, MARK: repr(t0), "DASK_CLIP_TIMELINE_LOG": str(log), "PYTHONPATH": f"{tree}:{hook}"}
    command = [sys.executable, "-u", "-m", "dask_clip.cli", "embed", str(photos), str(out)]
    command += ["--model-dir", str(model_dir), "--batch-size", str(batch), "--overwrite", "--no-progress"]
    command += ["--dashboard-address", "none"]
    load = os.getloadavg()[0]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd="/tmp")
    events: list[tuple[float, str]] = []
    cpu: dict[str, float] = {}

    def poll() -> None:
        alive: dict[str, str] = {}
        while True:
            now = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if f"{MARK}={t0!r}".encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                        continue
                    now[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:70]
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    cpu[pid] = max(cpu.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
                except OSError:
                    continue
            t = time.time() - t0
            events.extend((t, f"pid={p} appears: {now[p]}") for p in now.keys() - alive.keys())
            events.extend((t, f"pid={p} gone") for p in alive.keys() - now.keys())
            alive = now
            if proc.poll() is not None and not alive:
                return
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    assert proc.stdout is not None
    events.extend((time.time() - t0, "OUT " + line.rstrip()[:200]) for line in proc.stdout)  # as each comes
    proc.wait()
    exited = time.time() - t0
    poller.join(10)
    for line in log.read_text().splitlines():
        t, rest = line.split(" ", 1)
        events.append((float(t), rest))
    events.sort(key=lambda e: e[0])
    if proc.returncode != 0:
        raise RuntimeError("\n".join(m for _, m in events[-30:]))
    return {
        "tree": tree,
        "seconds": round(exited, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "cpu_s": {pid: round(s, 2) for pid, s in cpu.items()},
        "cpu_s_total": round(sum(cpu.values()), 2),
        "events": [f"{t:7.2f} {m}" for t, m in events],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--before", help="a tree with an older dask_clip package")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/startup-timeline-DATE.json)")
    parser.add_argument("--model-dir", help="an open_clip ViT-B-32 folder to read instead of writing one (600 MB)")
    args = parser.parse_args()

    import open_clip

    from benchmarks.bench_cpu import photo_folder
    from dask_clip.testing import write_model_dir

    date = dt.date.today().isoformat()
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"startup-timeline-{date}.json"
    work = Path(tempfile.mkdtemp(prefix="startup-timeline-"))
    photos, model_dir = work / "photos", Path(args.model_dir) if args.model_dir else work / "model"
    result: dict = {"photos": photo_folder(photos, args.photos), "batch_size": args.batch_size, "runs": []}
    if not args.model_dir:
        write_model_dir(model_dir, model_cfg=open_clip.get_model_config("ViT-B-32"))
    trees = {"after": str(ROOT)}
    if args.before:
        trees["before"] = str(Path(args.before).resolve())
    try:
        for round_no in range(args.rounds):
            order = list(trees.items())
            for name, tree in order if round_no % 2 == 0 else order[::-1]:
                run = {"name": name, "round": round_no, **timeline(tree, photos, model_dir, work, args.batch_size)}
                result["runs"].append(run)
                print(
                    f"== {name}, round {round_no}: {run['seconds']} s, load {run['load_before']}->{run['load_after']}"
                )
                print("\n".join(run["events"]))
                print("cpu s:", run["cpu_s"], "total", run["cpu_s_total"], flush=True)
                path.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"-> {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
