"""Scale benchmark of ``dedup_parquet``: an embeddings folder larger than memory, bounded steps.

One size per command. The synthetic embeddings (``dedup_data.py``: CLIP-like by default, 1%
planted near-duplicates at cosine 0.99-0.9995) are generated straight to a Parquet folder in
chunks of ``--partition-rows`` (never all in memory), then ``dedup_parquet`` runs on a
``LocalCluster`` of worker processes with a memory limit each, with ``max_memory`` as the
budget of one task, writing ids and flags only (``columns=["id"]``). Measured:

- **time per step**: the client-side phases are timed by wrapping the library's own functions
  (row numbering, sample, k-means, the results pass, the attach-and-write pass); inside the
  results pass, distributed's task stream splits the time into assign, shuffle, pairwise and
  routing (the span from the first task of a kind to the last, and the summed task seconds);
- **memory**: RSS of this process and all its children (the nanny and worker processes),
  summed, sampled every 0.25 s with psutil; the peak, and the peak per phase. RSS counts pages
  shared between processes (libraries) once per process: an upper bound of the real total.
  The scheduler runs in this process;
- **disk**: the largest size of the workers' spill/shuffle folder (``local_directory``);
- planted pairs found (a row of the pair flagged) and the summary.

Usage::

    python benchmarks/dedup_scale.py --rows 100000
    python benchmarks/dedup_scale.py --rows 1000000
    python benchmarks/dedup_scale.py --rows 10000000 --workdir /work/tmp-dedup   # ~20 GB of input
    python benchmarks/dedup_scale.py --rows 1000000 --plain                        # plain SemDeDup
    python benchmarks/dedup_scale.py --table          # table + plot of every results/dedup-scale-*.json

Add ``--keep-data`` to keep the generated folder (deleted after the run by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from dedup_data import clip_like_chunks, isotropic_chunks, write_parquet_dataset

RESULTS = Path(__file__).parent / "results"


class Sampler:
    """Sums the RSS of this process and its children every ``interval`` s; peak per phase."""

    def __init__(self, interval: float = 0.25, watch_dir: Path | None = None) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.phase = "start"
        self.peak: dict[str, float] = defaultdict(float)
        self.peak_by_process: dict[str, float] = defaultdict(float)
        self.timeline: list[tuple[float, float, float]] = []  # (t, rss GiB, disk GiB)
        self.watch_dir = watch_dir
        self.disk_peak = 0.0
        self._stop = threading.Event()
        self.t0 = time.perf_counter()

    def _dir_size(self) -> float:
        total = 0
        if self.watch_dir is None:
            return 0.0
        for root, _, files in os.walk(self.watch_dir):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, f)).st_size
        return total / 2**30

    def _run(self) -> None:
        import psutil

        tick = 0
        while not self._stop.is_set():
            total = 0.0
            procs = [self.proc, *self.proc.children(recursive=True)]
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss / 2**30
                    total += rss
                    name = "client+scheduler" if p.pid == self.proc.pid else f"{p.name()}-{p.pid}"
                    self.peak_by_process[name] = max(self.peak_by_process[name], rss)
            disk = self._dir_size() if tick % 8 == 0 else (self.timeline[-1][2] if self.timeline else 0.0)
            self.disk_peak = max(self.disk_peak, disk)
            self.peak[self.phase] = max(self.peak[self.phase], total)
            self.peak["all"] = max(self.peak["all"], total)
            self.timeline.append((round(time.perf_counter() - self.t0, 2), round(total, 3), round(disk, 3)))
            tick += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PhaseTimer:
    """Wraps library functions so each call is timed and labels the sampler's phase."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.seconds: dict[str, float] = defaultdict(float)
        self._patched: list[tuple[object, str, object]] = []

    def wrap(self, module: object, name: str, phase: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            before = self.sampler.phase
            self.sampler.phase = phase
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
                self.sampler.phase = before

        setattr(module, name, timed)
        self._patched.append((module, name, original))

    def capture(self, module: object, name: str) -> None:
        """Keep the return value of each call of ``module.name`` in ``self.returned[name]``."""
        original = getattr(module, name)
        self.returned: dict[str, object] = getattr(self, "returned", {})

        def kept(*args, **kwargs):
            out = original(*args, **kwargs)
            self.returned[name] = out
            return out

        setattr(module, name, kept)
        self._patched.append((module, name, original))

    def restore(self) -> None:
        for module, name, original in reversed(self._patched):
            setattr(module, name, original)


def task_prefixes(stream: list[dict]) -> dict[str, dict[str, float]]:
    """Span and summed compute seconds of the recorded tasks, by task prefix (``key_split``)."""
    from dask.utils import key_split

    spans: dict[str, list[float]] = {}
    for t in stream:
        prefix = key_split(t.get("key"))
        for s in t.get("startstops", ()):
            if s.get("action") == "compute":
                lo, hi, tot = spans.get(prefix, [np.inf, -np.inf, 0.0])
                spans[prefix] = [min(lo, s["start"]), max(hi, s["stop"]), tot + s["stop"] - s["start"]]
    return {p: {"span_seconds": round(hi - lo, 2), "task_seconds": round(tot, 2)} for p, (lo, hi, tot) in spans.items()}


# Dask fuses the library's functions into tasks with other names (read + assign, unpack +
# pairwise + routing), so the steps are timed inside the workers instead: a worker plugin
# wraps the step functions before any task is deserialised, and each call is recorded.
TIMED = {
    "assign": ("dask_clip.dedup.assign", "assign_partition"),
    "pairwise": ("dask_clip.dedup.pairwise", "dedup_partition"),
}


def _step_timer_plugin():
    from distributed import WorkerPlugin

    class StepTimer(WorkerPlugin):
        """Records (step, start, stop) of every call of the TIMED functions on ``worker.dedup_calls``."""

        name = "dedup-step-timer"

        def setup(self, worker) -> None:
            install_step_timer(worker)

    return StepTimer()


def install_step_timer(worker) -> None:
    import functools
    import importlib

    calls = worker.dedup_calls = []
    for step, (module_name, fn_name) in TIMED.items():
        module = importlib.import_module(module_name)
        original = getattr(module, fn_name)

        @functools.wraps(original)
        def timed(*args, _original=original, _step=step, **kwargs):
            t0 = time.time()
            try:
                return _original(*args, **kwargs)
            finally:
                calls.append((_step, t0, time.time()))

        setattr(module, fn_name, timed)


def collected_calls(dask_worker) -> list[tuple[str, float, float]]:
    return list(getattr(dask_worker, "dedup_calls", []))


def step_times(calls: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Summed seconds in each step's function over all workers, and the span first to last."""
    out: dict[str, dict[str, float]] = {}
    for step in TIMED:
        mine = [(a, b) for s, a, b in calls if s == step]
        if mine:
            out[step] = {
                "task_seconds": round(sum(b - a for a, b in mine), 2),
                "span_seconds": round(max(b for _, b in mine) - min(a for a, _ in mine), 2),
                "calls": len(mine),
            }
    return out


GENERATORS = {"isotropic": isotropic_chunks, "clip-like": clip_like_chunks}
DATA_NOTES = {
    "isotropic": "rows/1000 random centres + isotropic noise (cosine to centre ~0.7), 1% planted pairs at 0.99-0.9995",
    "clip-like": "CLIP-like (benchmarks/dedup_data.py), 1% planted pairs at cosine 0.99-0.9995 (anisotropic)",
}


def generate(folder: Path, rows: int, dim: int, partition_rows: int, seed: int, data: str) -> tuple[np.ndarray, float]:
    pairs_file = folder / "planted_pairs.npy"
    if pairs_file.exists():
        print(f"reusing {folder}", flush=True)
        return np.load(pairs_file), 0.0
    t0 = time.perf_counter()
    pairs = write_parquet_dataset(folder, GENERATORS[data](rows, dim, seed=seed, chunk=partition_rows))
    np.save(pairs_file, pairs)
    return pairs, time.perf_counter() - t0


def run(a: argparse.Namespace) -> dict:
    import logging

    import dask
    import pandas as pd
    from distributed import Client, LocalCluster, get_task_stream

    from dask_clip.dedup import dedup_parquet, kmeans, parquet

    workdir = a.workdir
    data = workdir / f"emb-{a.data}-{a.rows}-{a.dim}-{a.partition_rows}"
    out_dir = workdir / f"out-{a.rows}"
    scratch = workdir / "worker-scratch"
    pairs, gen_s = generate(data, a.rows, a.dim, a.partition_rows, a.seed, a.data)
    input_gib = sum(f.stat().st_size for f in data.glob("*.parquet")) / 2**30
    print(f"input {data}: {input_gib:.2f} GiB on disk (generated in {gen_s:.0f} s)", flush=True)
    k = a.n_clusters or round(np.sqrt(a.rows / 2))
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    logging.getLogger("dask_clip").setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    shutil.rmtree(out_dir, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    rec: dict = {
        "rows": a.rows,
        "dim": a.dim,
        "data": a.data,
        "data_note": DATA_NOTES[a.data],
        "input_gib_on_disk": round(input_gib, 2),
        "input_gib_float32": round(a.rows * a.dim * 4 / 2**30, 2),
        "partition_rows": a.partition_rows,
        "n_clusters": k,
        "max_iter": a.max_iter,
        "max_train_rows": a.max_train_rows,
        "eps": a.eps,
        "border_aware": not a.plain,
        "max_memory": a.max_memory,
        "workers": f"{a.workers} processes x 1 thread, memory_limit {a.worker_memory}",
        "shuffle_method": a.shuffle_method or "p2p (distributed default)",
        "p2p_comm_buffer": a.p2p_buffer,
        "generate_seconds": round(gen_s, 1),
    }
    with (
        dask.config.set(
            {
                "temporary-directory": str(scratch),
                "distributed.worker.daemon": False,
                # P2P buffers up to 1 GiB of outgoing shards per worker by default: bound it too
                "distributed.p2p.comm.buffer": a.p2p_buffer,
            }
        ),
        Sampler(watch_dir=scratch) as sampler,
        LocalCluster(
            n_workers=a.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=a.worker_memory,
            dashboard_address=None,
            local_directory=str(scratch),
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_step_timer_plugin())
        timer = PhaseTimer(sampler)
        timer.wrap(parquet, "with_row_numbers", "row_numbers")
        timer.capture(parquet, "prepare")
        timer.wrap(kmeans, "draw_sample", "sample")
        timer.wrap(kmeans, "fit_centroids", "kmeans")
        timer.wrap(parquet, "persist_and_wait", "results")
        t0 = time.perf_counter()
        try:
            with get_task_stream(client) as ts:
                summary = dedup_parquet(
                    str(data),
                    str(out_dir),
                    eps=a.eps,
                    n_clusters=k,
                    max_iter=a.max_iter,
                    max_train_rows=a.max_train_rows,
                    columns=["id"],
                    max_memory=a.max_memory,
                    border_aware=not a.plain,
                    shuffle_method=a.shuffle_method,
                    overwrite=True,
                )
        finally:
            timer.restore()
        total = time.perf_counter() - t0
        stream = ts.data
        calls = [c for per_worker in client.run(collected_calls).values() for c in per_worker]
    steps = {name: {"seconds": round(s, 2)} for name, s in timer.seconds.items()}
    steps["attach_write"] = {
        "seconds": round(total - sum(timer.seconds.values()), 2),
        "note": "reading the input again, attaching the results, writing, summary",
    }
    prefixes = task_prefixes(stream)
    rec["task_prefixes"] = prefixes
    for name, v in step_times(calls).items():
        steps.setdefault(name, {}).update(v)
    shuffle = [v for p, v in prefixes.items() if "shuffle" in p]
    if shuffle:  # both shuffles (cluster shuffle and the routing back): P2P transfer + unpack tasks
        steps["shuffle"] = {"task_seconds": round(sum(v["task_seconds"] for v in shuffle), 2)}
    for phase, peak in sampler.peak.items():
        steps.setdefault(phase, {})["peak_rss_gib"] = round(peak, 2)
    rec["steps"] = steps
    plan = timer.returned.get("prepare")
    if plan is not None:
        rec["plan"] = {**plan.info, "assign_block_rows": plan.assign_block_rows}
    rec["end_to_end_seconds"] = round(total, 1)
    rec["peak_rss_gib_all_processes"] = round(sampler.peak["all"], 2)
    rec["peak_rss_gib_by_process"] = {k2: round(v, 2) for k2, v in sampler.peak_by_process.items()}
    rec["peak_scratch_disk_gib"] = round(sampler.disk_peak, 2)
    rec["rss_timeline"] = sampler.timeline[:: max(1, len(sampler.timeline) // 400)]
    back = pd.read_parquet(out_dir, columns=["id", "duplicate"])
    flagged = np.zeros(a.rows, bool)
    flagged[back["id"].to_numpy()] = back["duplicate"].to_numpy()
    found = flagged[pairs[:, 0]] | flagged[pairs[:, 1]]
    rec["planted_pairs"] = len(pairs)
    rec[f"planted_found_eps_{a.eps:g}"] = round(float(found.mean()), 6)
    rec["summary"] = summary.reset_index().to_dict(orient="records")
    print(summary.to_string(), flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    if not a.keep_data:
        shutil.rmtree(data, ignore_errors=True)
    return rec


def load_all() -> list[dict]:
    recs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("dedup-scale-*.json"))]
    return sorted(recs, key=lambda r: (r.get("data", ""), r["border_aware"], r["rows"]))


PHASES = ("row_numbers", "sample", "kmeans", "results", "attach_write")
IN_RESULTS = ("assign", "shuffle", "pairwise")


def table(records: list[dict]) -> str:
    """Wall seconds per phase, task seconds inside the results pass, peak RSS, disk, recall."""
    head = f"{'rows':>9} {'data':>9} {'mode':>6} {'k':>5} {'brd/row':>7} "
    head += " ".join(f"{s[:10]:>10}" for s in PHASES) + " |" + " ".join(f"{s:>9}" for s in IN_RESULTS)
    head += f" | {'total s':>8} {'peak GiB':>8} {'disk GiB':>8} {'found':>6}"
    lines = [head, f"{'':>41}{'wall seconds per phase':^54} | {'task seconds (2 workers)':^29} |"]
    for r in records:
        phase = [r["steps"].get(s, {}).get("seconds") for s in PHASES]
        inner = [r["steps"].get(s, {}).get("task_seconds") for s in IN_RESULTS]
        found = next((v for key, v in r.items() if key.startswith("planted_found")), float("nan"))
        border = r.get("plan", {}).get("estimated_border_rows_per_row", float("nan")) if r["border_aware"] else 0.0
        lines.append(
            f"{r['rows']:>9} {r.get('data', '?'):>9} {'border' if r['border_aware'] else 'plain':>6} "
            f"{r['n_clusters']:>5} {border:>7.3f} "
            + " ".join(f"{v:>10.1f}" if v is not None else f"{'-':>10}" for v in phase)
            + " |"
            + " ".join(f"{v:>9.1f}" if v is not None else f"{'-':>9}" for v in inner)
            + f" | {r['end_to_end_seconds']:>8.1f} {r['peak_rss_gib_all_processes']:>8.2f}"
            f" {r['peak_scratch_disk_gib']:>8.2f} {found:>6.4f}"
        )
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    series = sorted({(r.get("data", "?"), r["border_aware"]) for r in records})
    for data, mode in series:
        rs = sorted(
            (r for r in records if r.get("data", "?") == data and r["border_aware"] == mode), key=lambda r: r["rows"]
        )
        rows = [r["rows"] for r in rs]
        label = f"{data}, {'border-aware' if mode else 'plain'}"
        style = "o-" if mode else "s--"
        a.plot(rows, [r["end_to_end_seconds"] for r in rs], style, label=f"end to end: {label}")
        b.plot(rows, [r["peak_rss_gib_all_processes"] for r in rs], style, label=label)
        if data == "isotropic" and mode:
            for s in PHASES:
                a.plot(rows, [r["steps"].get(s, {}).get("seconds", np.nan) for r in rs], ":", marker=".", label=s)
    lo = min(r["rows"] for r in records)
    a.plot([lo, 100 * lo], [20, 2000], "k", lw=0.5, alpha=0.5, label="linear")
    inputs = sorted({(r["rows"], r["input_gib_float32"]) for r in records})
    b.plot(*zip(*inputs), "k^", label="input embeddings (float32)")
    b.axhline(8, color="r", lw=1, ls="--", label="goal 8 GiB")
    for ax, title in ((a, "seconds"), (b, "peak RSS, all processes (GiB)")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("rows"), ax.set_title(title), ax.legend(fontsize=7)
    big = max((r for r in records if r["border_aware"]), key=lambda r: r["rows"], default=None)
    if big:
        t, rss, disk = zip(*big["rss_timeline"])
        c.plot(t, rss, label="RSS, all processes (GiB)")
        c.plot(t, disk, label="worker scratch on disk (GiB)")
        c.axhline(8, color="r", lw=1, ls="--")
        c.set_xlabel("seconds"), c.legend(fontsize=7)
        c.set_title(f"{big['rows']:,} rows ({big.get('data', '?')}), border-aware")
    fig.suptitle(f"dask_clip dedup_parquet, d=512, k=sqrt(rows/2), {records[-1]['workers']}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-clusters", type=int, default=None, help="default: round(sqrt(rows / 2))")
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--plain", action="store_true", help="plain SemDeDup (border_aware=False)")
    p.add_argument("--data", choices=sorted(GENERATORS), default="isotropic")
    p.add_argument("--partition-rows", type=int, default=25_000)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="k-means sample (default: 256 per cluster, capped by the budget)",
    )
    p.add_argument("--max-memory", default="1GiB", help="dedup budget of one task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-memory", default="4GiB", help="memory_limit of each worker process")
    p.add_argument("--p2p-buffer", default="128MiB", help="distributed.p2p.comm.buffer of the workers")
    p.add_argument("--shuffle-method", default=None, choices=("p2p", "tasks", "disk"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/dask-clip-dedup-scale"))
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="only print the table and plot of all results")
    a = p.parse_args(argv)
    if a.table:
        records = load_all()
        print(table(records))
        plot(records, RESULTS / "dedup-scale.png")
        return
    import torch

    torch.set_num_threads(1)
    rec = run(a)
    rec["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "memory_gib": round(__import__("psutil").virtual_memory().total / 2**30, 1),
        "note": "shared 2-core machine: other jobs may run at the same time",
    }
    name = f"dedup-scale-{a.data}-{a.rows}-{'plain' if a.plain else 'border'}"
    if a.shuffle_method:
        name += f"-{a.shuffle_method}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=1))
    print(table([rec]))
    print(f"wrote {RESULTS / name}.json")


if __name__ == "__main__":
    main()
