"""Scale benchmark of the retrieval index: build on Dask, recall against exact search, latency.

Data: ``dask_clip.testing.clustered_embeddings`` — unit vectors around 1,000 cluster centres of
heavy-tailed sizes, each cluster spread over its own 16-dim subspace plus isotropic noise
(a row's cosine to its nearest neighbour is ~0.7, to its 10th ~0.65 at 1M × 512). 0.1 % of the
rows get a null embedding. ``--queries`` more rows of the same distribution are held out as
queries (not in the index). The rows are written with ``dask_clip.io.writer.write_parquet`` (50k
rows per partition) and the index is built from that folder, as ``dask-clip index`` would.

The build runs on a ``LocalCluster`` of 2 worker processes × 1 thread (training, merge and
nprobe tuning run in this process). A thread samples the RSS of this process and of every
worker process (psutil, every 0.1 s); each build step's peak is reported for both (the held-out
queries and ground truth, ~100 MB, live in this process throughout).

Measured, at the largest size (default 1M × 512, ``index_key="auto"``, ``max_memory="4GB"``):

- build time and peak RSS per step, index bytes per vector (faiss file and id table);
- recall@10 of the default settings (auto key, tuned nprobe) against exact search (faiss
  ``IndexFlatIP`` over the same rows) on the held-out queries, and the recall/latency curve
  over nprobe;
- latency of single queries and of batches of 64: p50/p99, for the raw faiss search and for
  ``SearchIndex.search`` (which also assembles the result DataFrame with the rows' columns);
- how build time grows over ``--growth`` sizes (the first rows of the same data);
- the same recall on real embeddings: the bundled sample's 316 images embedded by ViT-B-32
  (random weights: no model hub here), exact (auto = Flat) and with a forced ``IVF8,Flat``,
  each row as a query, against brute force.

Usage::

    python benchmarks/bench_index.py                      # 1M x 512, growth 100k..1M (~15 min)
    python benchmarks/bench_index.py --rows 200000 --growth 50000 100000 --quick
    python benchmarks/bench_index.py --from-json benchmarks/results/index-scale.json   # plot only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
PARTITION_ROWS = 50_000
K = 10


class RSSSampler:
    """Samples (time, this process's RSS, its child processes' RSS) in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.samples: list[tuple[float, int, int]] = []

    def _children_rss(self) -> int:
        total = 0
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a process that just ended
                continue
        return total

    def __enter__(self) -> RSSSampler:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._proc.memory_info().rss, self._children_rss()))
            self._stop.wait(self._interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, start: float, seconds: float) -> dict[str, float]:
        """Peak RSS (GiB) of this process, of the workers, and of both, within a time window."""
        window = [s for s in self.samples if start <= s[0] <= start + seconds + self._interval]
        if not window:  # a step shorter than the interval: the nearest sample
            window = [min(self.samples, key=lambda s: abs(s[0] - start))]
        gib = 2**30
        return {
            "client_gib": round(max(s[1] for s in window) / gib, 3),
            "workers_gib": round(max(s[2] for s in window) / gib, 3),
            "total_gib": round(max(s[1] + s[2] for s in window) / gib, 3),
        }


def write_embeddings(x: np.ndarray, valid: np.ndarray, folder: Path) -> float:
    """Write rows as ``key``, ``aesthetic``, ``embedding`` Parquet parts of 50k rows."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    from dask_clip.columns import embedding_array
    from dask_clip.io.writer import write_parquet

    n = len(x)
    starts = list(range(0, n, PARTITION_ROWS))

    def part(start: int) -> pd.DataFrame:
        stop = min(start + PARTITION_ROWS, n)
        ok = valid[start:stop]
        df = pd.DataFrame(
            {
                "key": [f"{i:08d}" for i in range(start, stop)],
                "aesthetic": np.random.default_rng(start).uniform(0, 10, stop - start),
            }
        )
        df["embedding"] = embedding_array(x[start:stop][ok], ok)
        return df

    started = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        write_parquet(dd.from_map(part, starts), folder)
    return time.perf_counter() - started


def exact_neighbours(x: np.ndarray, valid: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Source rows of the exact top-k by inner product (faiss IndexFlatIP), int64 (Q, k)."""
    import faiss

    rows = np.flatnonzero(valid)
    flat = faiss.IndexFlatIP(x.shape[1])
    for start in range(0, len(rows), 200_000):
        flat.add(x[rows[start : start + 200_000]])
    _, found = flat.search(queries, k)
    return rows[found]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def latency(index, queries: np.ndarray, nprobe: int | None, batch: int) -> dict[str, dict[str, float]]:
    """Per call latency of the raw faiss search and of SearchIndex.search, batches of ``batch``."""
    import faiss

    params = None
    if faiss.try_extract_index_ivf(index.index) is not None:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
    calls = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    raw, full = [], []
    for q in calls[:3]:  # warm-up
        index.index.search(q, K, params=params)
        index.search(q, K, nprobe=nprobe)
    for q in calls:
        t = time.perf_counter()
        index.index.search(q, K, params=params)
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.search(q, K, nprobe=nprobe)
        full.append(time.perf_counter() - t)
    return {"calls": len(calls), "faiss": percentiles(raw), "search_dataframe": percentiles(full)}


def search_rows(index, queries: np.ndarray, nprobe: int | None) -> np.ndarray:
    got = index.search(queries, K, nprobe=nprobe)
    return got["source_row"].to_numpy().reshape(len(queries), K)


def build_once(source: str, out: Path, client, sampler: RSSSampler, **kwargs) -> dict:
    from dask_clip.index import build

    client.restart()  # the same fresh workers for every build
    summary = build(source, out, client=client, overwrite=True, **kwargs)
    record = summary.to_dict()
    record["memory_per_step"] = {name: sampler.peaks(s["start"], s["seconds"]) for name, s in summary.steps.items()}
    return record


def index_bytes(index_dir: Path) -> dict[str, int]:
    manifest = json.loads((index_dir / "index.json").read_text())
    folder = index_dir / manifest["version"]
    faiss_bytes = sum(p.stat().st_size for p in folder.glob("index.*"))
    id_bytes = sum(p.stat().st_size for p in (folder / "ids").glob("*.parquet"))
    return {"faiss": faiss_bytes, "id_table": id_bytes}


def real_sample(work: Path) -> dict:
    """Recall on the bundled sample embedded by ViT-B-32 (random weights), leave nothing out."""
    from importlib import resources

    import dask
    import dask.dataframe as dd
    import pandas as pd

    from dask_clip import ImageEmbedder
    from dask_clip.columns import as_binary, embeddings_to_numpy
    from dask_clip.index import build, load

    df = pd.read_parquet(resources.files("dask_clip") / "data" / "sample.parquet")
    df["jpg"] = as_binary(df["jpg"])
    embedder = ImageEmbedder(model="ViT-B-32", pretrained=None, image_column="jpg", image_kind="bytes", device="cpu")
    started = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        embedded = embedder(dd.from_pandas(df, npartitions=2)).compute()
    embed_seconds = time.perf_counter() - started
    x = embeddings_to_numpy(embedded["embedding"])
    valid = np.isfinite(x).all(axis=1)
    truth = exact_neighbours(x, valid, x[valid], K)
    out: dict = {"rows": len(df), "vectors": int(valid.sum()), "embed_seconds": round(embed_seconds, 1)}
    frame = dd.from_pandas(embedded.drop(columns=["jpg"]), npartitions=2)
    for key in ("auto", "IVF8,Flat"):
        folder = work / f"sample-{key.replace(',', '-')}"
        with dask.config.set(scheduler="threads"):
            summary = build(frame, folder, index_key=key, overwrite=True)
        index = load(folder)
        row: dict = {"index_key": summary.index_key, "default_nprobe": summary.nprobe, "tuning": summary.tuning}
        row["recall_at_10_default"] = recall_at(search_rows(index, x[valid], None), truth)
        if key != "auto":
            row["recall_at_10_by_nprobe"] = {
                p: round(recall_at(search_rows(index, x[valid], p), truth), 4) for p in (1, 2, 4, 8)
            }
        out[key] = row
    return out


def run(args: argparse.Namespace) -> dict:
    import faiss
    from distributed import Client, LocalCluster

    from dask_clip.index import load
    from dask_clip.testing import clustered_embeddings

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": os.getloadavg(),
        },
        "data": {
            "generator": "dask_clip.testing.clustered_embeddings(clusters=1000, subspace=16, spread=1.0, noise=0.7)",
            "rows": args.rows,
            "dim": args.dim,
            "queries": args.queries,
            "null_fraction": 0.001,
        },
        "settings": {
            "index_key": "auto",
            "max_memory": args.max_memory,
            "cluster": "LocalCluster 2 processes x 1 thread",
        },
    }
    t = time.perf_counter()
    data = clustered_embeddings(args.rows + args.queries, args.dim, seed=0)
    queries = np.ascontiguousarray(data[args.rows :])
    x = data[: args.rows]
    valid = np.ones(args.rows, bool)
    valid[np.random.default_rng(1).choice(args.rows, args.rows // 1000, replace=False)] = False
    result["data"]["generate_seconds"] = round(time.perf_counter() - t, 1)
    sizes = sorted({*args.growth, args.rows})
    truths = {}
    for n in sizes:
        t = time.perf_counter()
        truths[n] = exact_neighbours(x[:n], valid[:n], queries, K)
        result["data"][f"exact_seconds_{n}"] = round(time.perf_counter() - t, 1)
    source = work / "embeddings"
    if not (source / "_dask_clip.json").exists():
        result["data"]["write_seconds"] = round(write_embeddings(x, valid, source), 1)
    del data, x
    growth = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        RSSSampler() as sampler,
    ):
        for n in sizes:
            parts = sorted(p for p in os.listdir(source) if p.startswith("part-"))[: -(-n // PARTITION_ROWS)]
            subset = [str(source / p) for p in parts]
            out = work / f"index-{n}"
            print(f"building {n} rows ({len(subset)} partitions)...", flush=True)
            record = build_once(
                subset if n < args.rows else str(source), out, client, sampler, max_memory=args.max_memory
            )
            index = load(out)
            record["bytes"] = index_bytes(out)
            record["bytes_per_vector"] = {k: round(v / record["vectors"], 1) for k, v in record["bytes"].items()}
            record["recall_at_10_default"] = round(recall_at(search_rows(index, queries, None), truths[n]), 4)
            print(
                f"  {record['index_key']} nprobe {record['nprobe']}: {record['seconds']:.1f}s, "
                f"recall@10 {record['recall_at_10_default']:.3f}",
                flush=True,
            )
            growth.append(record)
            del index
        result["growth"] = growth
        result["largest"] = growth[-1]
    index = load(work / f"index-{args.rows}")
    nprobe = index.nprobe
    curve = []
    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is not None:
        nlist = ivf.nlist
        for p in [2**i for i in range(int(np.log2(nlist)) + 1) if 2**i <= min(nlist, 512)]:
            found = search_rows(index, queries, p)
            point = {"nprobe": p, "recall_at_10": round(recall_at(found, truths[args.rows]), 4)}
            point.update(latency(index, queries[: min(500, len(queries))], p, 1))
            curve.append(point)
            print(f"  nprobe {p}: recall {point['recall_at_10']:.3f}, p50 {point['faiss']['p50_ms']} ms", flush=True)
    result["nprobe_curve"] = curve
    result["latency_default"] = {
        "nprobe": nprobe,
        "single": latency(index, queries, nprobe, 1),
        "batch_64": latency(index, queries, nprobe, 64),
    }
    # faiss spreads a batch over its OpenMP threads; on 2 busy cores one thread may be faster
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    result["latency_default"]["batch_64_one_thread"] = latency(index, queries, nprobe, 64)
    faiss.omp_set_num_threads(threads)
    result["latency_default"]["omp_threads"] = threads
    if args.sample:
        print("real embeddings of the bundled sample...", flush=True)
        result["sample"] = real_sample(work)
    result["machine"]["load_average_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = ["count", "sample", "train", "add", "merge", "tune", "publish"]
    sizes = [g["rows"] for g in result["growth"]]
    bottom = np.zeros(len(sizes))
    for step in steps:
        values = np.array([g["steps"].get(step, {}).get("seconds", 0.0) for g in result["growth"]])
        if values.any():
            ax1.bar(
                [f"{s // 1000}k\n{g['index_key']}" for s, g in zip(sizes, result["growth"])],
                values,
                bottom=bottom,
                label=step,
            )
            bottom += values
    ax1.set_ylabel("seconds")
    ax1.set_title(f"build time by step ({result['machine']['cpus']} CPUs, 2 worker processes)")
    ax1.legend(fontsize=8)
    curve = result.get("nprobe_curve") or []
    if curve:
        ax2.plot([c["faiss"]["p50_ms"] for c in curve], [c["recall_at_10"] for c in curve], "o-", label="p50, 1 query")
        for c in curve:
            ax2.annotate(
                str(c["nprobe"]),
                (c["faiss"]["p50_ms"], c["recall_at_10"]),
                fontsize=7,
                xytext=(3, -8),
                textcoords="offset points",
            )
        default = result["latency_default"]
        largest = result["largest"]
        ax2.plot(
            [default["single"]["faiss"]["p50_ms"]],
            [largest["recall_at_10_default"]],
            "r*",
            markersize=14,
            label=f"default (nprobe {default['nprobe']})",
        )
        ax2.axhline(0.95, color="gray", ls="--", lw=0.8)
        ax2.axvline(10, color="gray", ls=":", lw=0.8)
        ax2.set_xscale("log")
        ax2.set_xlabel("single-query latency p50 (ms, faiss search)")
        ax2.set_ylabel("recall@10 vs exact")
        ax2.set_title(f"{largest['rows'] // 1000}k x {largest['dim']}: {largest['index_key']}, nprobe sweep")
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--growth", type=int, nargs="*", default=[100_000, 250_000, 500_000])
    parser.add_argument("--max-memory", default="4GB")
    parser.add_argument("--no-sample", dest="sample", action="store_false", help="skip the bundled-sample recall")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--output", default=str(RESULTS / "index-scale.json"))
    parser.add_argument("--from-json", help="only plot an earlier result")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        output = Path(args.from_json)
    else:
        result = run(args)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str))
    plot(result, output.with_suffix(".png"))
    largest, default = result["largest"], result["latency_default"]
    print(
        f"{largest['rows']} x {largest['dim']}: {largest['index_key']}, nprobe {default['nprobe']}, "
        f"build {largest['seconds']:.1f}s, recall@10 {largest['recall_at_10_default']:.3f}, "
        f"single p50 {default['single']['faiss']['p50_ms']} ms (DataFrame {default['single']['search_dataframe']['p50_ms']} ms), "
        f"batch-64 p50 {default['batch_64']['faiss']['p50_ms']} ms "
        f"(1 thread: {default.get('batch_64_one_thread', {}).get('faiss', {}).get('p50_ms')} ms) -> {output}"
    )


if __name__ == "__main__":
    main()
