"""Border-aware dedup of this tree against another git ref's, in one process, on the same data.

For each of ``dedup_border.py``'s sets and eps: the data and centroids are built once, then
plain SemDeDup (this tree), border-aware (this tree) and border-aware (the base ref) run
alternately (and, where this tree's border-aware run takes the one-task way of small inputs,
plain SemDeDup forced the same way, ``plain_one_task``), ``--repeats`` times (the minimum counts), on Dask's threaded scheduler (2 threads,
one torch thread each). The base ref's ``dask_clip`` is extracted with ``git archive`` and
imported under another name (``dask_clip_base``), so both trees see the same load. Recall is
checked for both trees (planted pairs, or all pairs within eps for the issue-like set).

Usage::

    python benchmarks/dedup_border_compare.py --base main --rows 50000 \\
        --out benchmarks/results/dedup-border-compare.json
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from dedup_border import EPS, frame, make_set

ROOT = Path(__file__).resolve().parent.parent


def import_base(ref: str, where: Path):
    """``dask_clip`` of git ``ref``, importable as ``dask_clip_base``."""
    data = subprocess.run(["git", "archive", ref, "dask_clip"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    src, dst = where / "dask_clip", where / "dask_clip_base"
    src.rename(dst)
    for f in dst.rglob("*.py"):
        f.write_text(f.read_text().replace("dask_clip.", "dask_clip_base.").replace("dask_clip ", "dask_clip_base "))
    for f in dst.rglob("dask_clip.yaml"):  # the config file, whose name the rewrite above changed
        f.with_name("dask_clip_base.yaml").write_text(f.read_text().replace("dask_clip:", "dask_clip_base:"))
    sys.path.insert(0, str(where))
    return importlib.import_module("dask_clip_base.dedup")


def recall(flags: np.ndarray, check: np.ndarray) -> float:
    return float((flags[check[:, 0]] | flags[check[:, 1]]).mean())


def run_set(name: str, eps: float, repeats: int, rows: int, base) -> dict:
    import dask
    import dask.dataframe as dd

    from dask_clip.dedup import semantic_dedup
    from dask_clip.dedup.workflow import attach_results, cluster_results, prepare

    t0 = time.perf_counter()
    x, pairs, c, k, truth, _ = make_set(name, eps, 0, n=rows)
    print(f"[{name} eps={eps}] {x.shape} k={k} built in {time.perf_counter() - t0:.1f} s", flush=True)
    ddf = dd.from_pandas(frame(x), npartitions=max(2, len(x) // 25_000), sort=False)
    check = truth if truth is not None else pairs

    def plain_one_task():
        # plain SemDeDup with given centroids reads nothing before the graph, so it never takes
        # the one-task way by itself; forced here, as the fair reference where border-aware takes it
        plan = prepare(ddf, centroids=c, eps=eps, border_aware=False)
        plan.single_task = True
        return attach_results(plan, cluster_results(plan))

    runs = {
        "plain": lambda: semantic_dedup(ddf, centroids=c, eps=eps, border_aware=False),
        "border": lambda: semantic_dedup(ddf, centroids=c, eps=eps, border_aware=True),
        "border_base": lambda: base.semantic_dedup(ddf, centroids=c, eps=eps, border_aware=True),
    }
    rec: dict = {"set": name, "eps": eps, "rows": len(x), "dim": x.shape[1], "k": k}
    with dask.config.set(scheduler="threads", num_workers=2):
        rec["border_one_task"] = bool(prepare(ddf, centroids=c, eps=eps).single_task)
    if rec["border_one_task"]:
        runs["plain_one_task"] = plain_one_task
    times: dict[str, list[float]] = {m: [] for m in runs}
    with dask.config.set(scheduler="threads", num_workers=2):
        for _ in range(repeats):
            for mode, make in runs.items():
                t0 = time.perf_counter()
                out = make().compute()
                times[mode].append(time.perf_counter() - t0)
                rec[f"recall_{mode}"] = round(recall(out["duplicate"].to_numpy(), check), 6)
    for mode in runs:
        rec[f"seconds_{mode}"] = round(min(times[mode]), 2)
        rec[f"seconds_{mode}_all"] = [round(t, 2) for t in times[mode]]
    rec["ratio_border"] = round(rec["seconds_border"] / rec["seconds_plain"], 3)
    rec["ratio_border_base"] = round(rec["seconds_border_base"] / rec["seconds_plain"], 3)
    if "plain_one_task" in runs:
        rec["ratio_border_to_plain_one_task"] = round(rec["seconds_border"] / rec["seconds_plain_one_task"], 3)
    rec["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(
        f"  plain {rec['seconds_plain']} s; border {rec['seconds_border']} s (x{rec['ratio_border']}, recall "
        f"{rec['recall_border']}); base {rec['seconds_border_base']} s (x{rec['ratio_border_base']}, recall "
        f"{rec['recall_border_base']}); plain in one task {rec.get('seconds_plain_one_task', '-')} s; "
        f"load {rec['load_average_1min']}",
        flush=True,
    )
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="main", help="git ref to compare with")
    p.add_argument("--sets", nargs="+", default=["issue", "clip-like", "isotropic"])
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rows", type=int, default=50_000, help="rows of the clip-like and isotropic sets")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup-border-compare.json")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    base_commit = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, capture_output=True, text=True)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(a.base, Path(tmp))
        records = [run_set(s, e, a.repeats, a.rows, base) for s in a.sets for e in a.eps]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "tree": head.strip(),
        "base": f"{a.base} ({base_commit.stdout.strip()})",
        "scheduler": "dask threads, 2 workers, torch 1 thread each; same data and centroids for all three",
        "load_average_1_5_15_at_start": [round(v, 2) for v in load],
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "records": records,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
