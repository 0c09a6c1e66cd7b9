"""Scale benchmark of dask_clip.dedup.semantic_dedup on synthetic CLIP-like embeddings.

Synthetic data: ``n`` unit vectors in ``d`` dims around ``n / 1000`` random centres (each row's
cosine to its centre is about 0.7), plus planted near-duplicates: 2% of the rows are a copy of
another row with a little noise (cosine about 0.997, so within eps = 0.01).

Each step of the workflow is run on its own and persisted (``persist`` + ``wait``), timed with
``time.perf_counter``, and its memory measured by sampling this process's RSS (psutil, every
20 ms). The scheduler is an in-process distributed cluster (``LocalCluster(processes=False)``,
one worker with ``--threads`` threads), so every task runs in this process and the RSS is all of
it (tracemalloc would miss torch, faiss and Arrow allocations); shuffles use distributed's P2P
shuffle, as they would on a real cluster. The table shows each step's seconds and the peak RSS
of the whole process during it (the persisted data of earlier steps included); the JSON also has
the increase over the RSS before the step, the largest cluster, and what one dense similarity
matrix of it (and of all rows) would need. ``e2e`` is ``semantic_dedup`` + ``dedup_summary``
in one go on the same input.

Usage::

    python benchmarks/dedup_scale.py --sizes 100000 300000 1000000
    python benchmarks/dedup_scale.py --from-json benchmarks/results/dedup-scale.json  # table + plot
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


class PeakRSS:
    """Context manager sampling the process RSS in a thread; ``peak`` and ``start`` in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.start = self.peak = 0

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def make_embeddings(n: int, d: int, seed: int, dup_fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(n, d)`` unit rows and int64 ``(m, 2)`` planted (duplicate, source) pairs."""
    rng = np.random.default_rng(seed)
    n_centres = max(1, n // 1000)
    centres = rng.standard_normal((n_centres, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    step = 65536
    for s in range(0, n, step):
        e = min(s + step, n)
        noise = rng.standard_normal((e - s, d), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x[s:e] = centres[rng.integers(0, n_centres, e - s)] + noise
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    m = int(n * dup_fraction)
    rows = rng.permutation(n)[: 2 * m]
    dup, src = rows[:m], rows[m:]
    noise = rng.standard_normal((m, d), dtype=np.float32)
    noise *= 0.08 / np.linalg.norm(noise, axis=1, keepdims=True)
    x[dup] = x[src] + noise
    x[dup] /= np.linalg.norm(x[dup], axis=1, keepdims=True)
    return x, np.stack([dup, src], axis=1)


def persist(coll):
    """Persist on the cluster and wait (a bare persist returns at once under distributed)."""
    from distributed import wait

    coll = coll.persist()
    wait(coll)
    return coll


def to_ddf(x: np.ndarray, partition_rows: int):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    n, d = x.shape
    col = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))
    from distributed import get_client

    pdf = pd.DataFrame({"id": np.arange(n), "embedding": pd.arrays.ArrowExtensionArray(col)})
    parts = [pdf.iloc[s : s + partition_rows] for s in range(0, n, partition_rows)]
    # scatter the partitions instead of embedding them in the graph
    return persist(dd.from_delayed(get_client().scatter(parts), meta=pdf.iloc[:0], verify_meta=False))


def run_size(n: int, d: int, rows_per_cluster: int, partition_rows: int, max_iter: int, seed: int) -> dict:

    from dask_clip.dedup import _join, assign, kmeans, pairwise, workflow
    from dask_clip.dedup.results import dedup_summary

    k = max(1, n // rows_per_cluster)
    rec: dict = {
        "rows": n,
        "dim": d,
        "n_clusters": k,
        "max_iter": max_iter,
        "max_train_rows": kmeans.TRAIN_ROWS_PER_CENTROID * k,
        "steps": {},
    }

    def step(name: str, meter: PeakRSS, **extra: object) -> None:
        rec["steps"][name] = {
            "seconds": round(meter.seconds, 2),
            "peak_rss_gib": round(meter.peak / 2**30, 2),
            "peak_increase_gib": round((meter.peak - meter.start) / 2**30, 2),
            **extra,
        }
        print(f"  {name:<10} {meter.seconds:8.1f} s   peak +{(meter.peak - meter.start) / 2**30:5.2f} GiB", flush=True)

    with PeakRSS() as m:
        x, planted = make_embeddings(n, d, seed)
        ddf = to_ddf(x, partition_rows)
        del x
    step("generate", m)
    rec["npartitions"] = ddf.npartitions

    with PeakRSS() as m:
        sample = kmeans.sample_embeddings(ddf, "embedding", max_rows=rec["max_train_rows"], seed=seed)
    step("sample", m, sample_rows=len(sample))
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # torch.set_num_threads(1) may have lowered it
    with PeakRSS() as m:
        centroids = kmeans.fit_centroids(sample, k, max_iter=max_iter, seed=seed)
    step("kmeans", m)
    del sample

    kw = dict(embedding_column="embedding", device=None)
    akw = dict(kw, id_column=None, which_to_keep="hard", seed=seed)
    with PeakRSS() as m:
        payload = persist(
            ddf.map_partitions(
                assign.assign_partition,
                centroids=centroids,
                **akw,
                meta=assign.assign_partition(ddf._meta, centroids, **akw),
                enforce_metadata=False,
            )
        )
    step("assign", m)
    with PeakRSS() as m:
        clustered = persist(payload.shuffle(on="cluster", npartitions=ddf.npartitions))
        sizes = clustered["cluster"].value_counts().compute()
    step("shuffle", m)
    del payload
    largest = int(sizes.max())
    with PeakRSS() as m:
        scored = persist(
            clustered.map_partitions(
                pairwise.dedup_partition,
                block_size=pairwise.PAIRWISE_BLOCK_SIZE,
                meta=pairwise.dedup_partition(clustered._meta),
                enforce_metadata=False,
            )
        )
    step(
        "pairwise",
        m,
        largest_cluster=largest,
        dense_largest_cluster_gib=round(largest**2 * 4 / 2**30, 3),
        dense_all_rows_gib=round(n**2 * 4 / 2**30, 1),
        pairs_compared=int((sizes.astype(np.int64) * (sizes - 1) // 2).sum()),
    )
    del clustered
    result = _join.join_back(ddf, scored, workflow._attach, eps=0.01)
    with PeakRSS() as m:  # route results back to the input rows, attach, summarise
        summary = dedup_summary(result, eps=[0.001, 0.01, 0.05])
    step("join_back", m)

    del scored
    # the public function end to end (k-means included), the same work without the persists
    from dask_clip.dedup import semantic_dedup

    with PeakRSS() as m:
        e2e = semantic_dedup(ddf, n_clusters=k, eps=0.01, seed=seed, max_iter=max_iter)
        dedup_summary(e2e, eps=[0.01])
    rec["end_to_end"] = {
        "seconds": round(m.seconds, 2),
        "peak_rss_gib": round(m.peak / 2**30, 2),
        "peak_increase_gib": round((m.peak - m.start) / 2**30, 2),
    }
    print(f"  {'end2end':<10} {m.seconds:8.1f} s   peak +{(m.peak - m.start) / 2**30:5.2f} GiB", flush=True)

    dup = result[["duplicate"]].compute()["duplicate"].to_numpy()
    # a planted pair is found when at least one of its two rows is flagged
    found = dup[planted[:, 0]] | dup[planted[:, 1]]
    rec["planted_pairs"] = len(planted)
    rec["planted_found_eps_0.01"] = round(float(found.mean()), 5)
    rec["summary"] = summary.reset_index().to_dict(orient="records")
    rec["total_seconds_excl_generate"] = round(sum(v["seconds"] for s, v in rec["steps"].items() if s != "generate"), 2)
    print(summary.to_string(), flush=True)
    del result, ddf, e2e
    gc.collect()
    return rec


def table(records: list[dict]) -> str:
    """Seconds and peak process RSS (GiB) per step, end to end, and the planted pairs found."""
    steps = ["sample", "kmeans", "assign", "shuffle", "pairwise", "join_back"]
    head = (
        f"{'rows':>9} {'k':>5} {'input GiB':>9} "
        + " ".join(f"{s:>13}" for s in steps)
        + f" {'sum s':>7} {'e2e s':>7} {'e2e GiB':>7} {'largest':>8} {'found':>6}"
    )
    lines = [head, " " * 26 + " ".join(f"{'s / GiB':>13}" for _ in steps)]
    for r in records:
        cells = [f"{r['steps'][s]['seconds']:6.1f} /{r['steps'][s]['peak_rss_gib']:5.2f}" for s in steps]
        lines.append(
            f"{r['rows']:>9} {r['n_clusters']:>5} {r['rows'] * r['dim'] * 4 / 2**30:>9.2f} "
            + " ".join(f"{c:>13}" for c in cells)
            + f" {r['total_seconds_excl_generate']:>7.1f} {r['end_to_end']['seconds']:>7.1f}"
            + f" {r['end_to_end']['peak_rss_gib']:>7.2f}"
            + f" {r['steps']['pairwise']['largest_cluster']:>8} {r['planted_found_eps_0.01']:>6.3f}"
        )
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    steps = ["sample", "kmeans", "assign", "shuffle", "pairwise", "join_back"]
    rows = [r["rows"] for r in records]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for s in steps:
        a.plot(rows, [r["steps"][s]["seconds"] for r in records], marker="o", label=s)
        b.plot(rows, [r["steps"][s]["peak_rss_gib"] for r in records], marker="o", label=s)
    b.plot(rows, [r["rows"] * r["dim"] * 4 / 2**30 for r in records], "k--", label="input embeddings")
    for ax, title in ((a, "seconds per step"), (b, "peak process RSS during the step (GiB)")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("rows"), ax.set_title(title)
    a.legend(fontsize=8), b.legend(fontsize=8)
    fig.suptitle(f"dask_clip semantic_dedup, d={records[0]['dim']}, k=rows/1000, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rows-per-cluster", type=int, default=1000, help="n_clusters = rows // this")
    p.add_argument("--partition-rows", type=int, default=50_000)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Dask threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "dedup-scale.json")
    p.add_argument("--from-json", type=Path, help="only print the table and plot of a results file")
    a = p.parse_args(argv)
    if a.from_json:
        records = json.loads(a.from_json.read_text())["records"]
        print(table(records))
        plot(records, a.from_json.with_suffix(".png"))
        return

    import logging

    import torch
    from distributed import Client, LocalCluster

    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)  # per-shuffle INFO/WARNING chatter
    torch.set_num_threads(1)  # one torch thread per Dask thread: no oversubscription
    records = []
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=a.threads, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        for n in a.sizes:
            print(f"rows={n}", flush=True)
            records.append(run_size(n, a.dim, a.rows_per_cluster, a.partition_rows, a.max_iter, a.seed))
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "memory_gib": round(__import__("psutil").virtual_memory().total / 2**30, 1),
        },
        "scheduler": (
            f"distributed LocalCluster(processes=False), 1 worker x {a.threads} threads, P2P "
            "shuffle; torch 1 thread per task; faiss OpenMP on all cores (client)"
        ),
        "note": "shared 2-core machine: other jobs ran at the same time, timings are noisy",
        "memory": "peak process RSS sampled every 20 ms (psutil); increase = peak - RSS before the step",
        "records": records,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(table(records))
    print(f"wrote {a.out}")
    plot(records, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
