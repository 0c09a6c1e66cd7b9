"""Time of the three-step plan (exact -> phash -> semantic) against semantic dedup alone.

A synthetic set (``dedup_phash.synthetic``: procedural JPEGs of ``--sides`` px, 5 % with a
re-encoded, a resized and two cropped copies) plus 2 % byte-identical copies, with CLIP-like embeddings
(``dedup_data.ClipLike``) in which every copy sits at cosine 0.995 of its original. The pHash
column is precomputed (as ``embed --phash`` would); the plan and semantic alone run on Dask's
threaded scheduler (2 threads), alternately, ``--repeats`` times (the minimum counts). Also
pHash recall per copy kind and precision over all pairs at the plan's k (``dedup_phash.score``,
brute force over the synthetic copies before the byte copies are planted).

Usage::

    python benchmarks/dedup_plan.py --rows 100000 --repeats 1 --out benchmarks/results/dedup-plan-100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def build(rows: int, seed: int = 0, sides: tuple[int, int] = (64, 128), processes: int = 2):
    import pandas as pd
    import pyarrow as pa
    from dedup_data import ClipLike, turn
    from dedup_phash import synthetic

    built = synthetic(rows, seed, sides=sides, processes=processes, keep=True)
    blobs, source, kind, h = built["blobs"], built["source"], built["kind"], built["phash"]
    # the synthetic copies as generated, before the byte copies below overwrite some rows
    truth = (np.array(h, copy=True), np.array(source, copy=True), list(kind))
    rng = np.random.default_rng(seed)
    dup = rng.choice(len(blobs), int(0.02 * len(blobs)), replace=False)
    src = rng.integers(0, len(blobs), len(dup))
    for d, s in zip(dup, src):
        blobs[d], source[d], h[d] = blobs[s], source[s], h[s]
    dist = ClipLike.build(512, seed)
    emb = dist.rows(rng, int(source.max()) + 1)[source]
    copy = np.array([k != "original" for k in kind])
    emb[copy] = turn(emb[copy], rng, 0.995, 0.996)
    n, d = emb.shape
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "image": pd.arrays.ArrowExtensionArray(pa.array(blobs, pa.binary())),
            "phash": pd.array(h, dtype="UInt64"),
            "embedding": pd.arrays.ArrowExtensionArray(
                pa.ListArray.from_arrays(
                    pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(emb.reshape(-1))
                )
            ),
        }
    )
    return df, truth


def main(argv: list[str] | None = None) -> None:
    import dask
    import dask.dataframe as dd
    import torch

    from dask_clip.dedup.plan import dedup_steps

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--sides", type=int, nargs=2, default=[64, 128], help="synthetic images' side range, px")
    p.add_argument("--processes", type=int, default=2, help="processes building the synthetic set")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup-plan.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    t0 = time.perf_counter()
    df, truth = build(a.rows, sides=tuple(a.sides), processes=a.processes)
    build_s = time.perf_counter() - t0
    ddf = dd.from_pandas(df, npartitions=4, sort=False)
    kw = dict(id_column="id", k=6, eps=0.01, n_clusters=max(2, int(np.sqrt(len(df) / 2))), seed=0)
    times: dict[str, list[float]] = {"plan": [], "semantic": []}
    summaries = {}
    with dask.config.set({"scheduler": "threads", "num_workers": 2, "dataframe.shuffle.method": "tasks"}):
        for _ in range(a.repeats):
            for name, steps in (("plan", ("exact", "phash", "semantic")), ("semantic", ("semantic",))):
                t0 = time.perf_counter()
                _, summary = dedup_steps(ddf, steps, **kw)
                times[name].append(time.perf_counter() - t0)
                summaries[name] = summary.to_dict(orient="records")
    rec = {
        "rows": len(df),
        "sides": list(a.sides),
        "build_seconds": round(build_s, 1),
        "plan_seconds": round(min(times["plan"]), 2),
        "semantic_seconds": round(min(times["semantic"]), 2),
        "plan_over_semantic": round(min(times["plan"]) / min(times["semantic"]), 3),
        "all_seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "steps": summaries,
    }
    from dedup_phash import score

    # pHash recall per copy kind and precision over all pairs at the plan's k (brute force)
    rec["phash_at_k"] = [r for r in score(*truth) if r["k"] == kw["k"]]
    print(json.dumps(rec, indent=1))
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_1_5_15_at_start": [round(v, 2) for v in load],
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "records": [rec],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
