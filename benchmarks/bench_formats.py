"""Write throughput of each output format against Parquet, and read-back equality, in one run.

Data: ``--rows`` unit vectors of ``--dim`` float32 (seeded normal draws, normalised) with a
string ``key`` column, as an embedder's output looks (``list<float32>`` Arrow column), in
partitions of ``--partition-rows``. Each partition is generated from its seed and the frame is
persisted in memory first (``generate_seconds``), so the writes time the writers alone: Arrow
conversion, encoding and the files (about 3 GB of embeddings at 1M x 768).

Each format writes the whole frame with its real writer (``write_parquet``, ``write_laion`` with
float32 and float16, ``write_lance``) on Dask's threaded scheduler in this process (all cores),
into a fresh folder; Parquet runs first and last, and each ratio is against the mean of those
two runs (the drift between them is reported). Then each output is read back partition by
partition and compared with the regenerated partition: float32 bit for bit (float16: equal to
the float32 rounded), keys and row order.

Usage::

    python benchmarks/bench_formats.py                                  # 1M x 768
    python benchmarks/bench_formats.py --rows 100000 --out /tmp/formats
    python benchmarks/bench_formats.py --rows 200000 --null-every 50   # 2 % failed images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dask_clip.backends.arrow import list_float32_array
from dask_clip.columns import embeddings_to_numpy
from dask_clip.io.writer import part_name, write_parquet
from dask_clip.io.writers.laion import file_names, write_laion
from dask_clip.io.writers.lance import write_lance

RESULTS = Path(__file__).parent / "results"


def make_partition(i: int, rows: int, dim: int, null_every: int = 0) -> pd.DataFrame:
    """Partition ``i``: float32 unit vectors from seed ``i`` and keys ``p{i}-{row}``; with
    ``null_every``, every such row is null (as a failed image)."""
    rng = np.random.default_rng(i)
    valid = np.ones(rows, dtype=bool)
    if null_every:
        valid[::null_every] = False
    x = rng.standard_normal((int(valid.sum()), dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "key": pd.array([f"p{i}-{r}" for r in range(rows)], dtype=pd.ArrowDtype(pa.string())),
            "embedding": pd.array(list_float32_array(x, valid), dtype=pd.ArrowDtype(pa.list_(pa.float32()))),
        }
    )


def frame(rows: int, dim: int, partition_rows: int, null_every: int = 0) -> tuple[dd.DataFrame, list[int]]:
    sizes = [min(partition_rows, rows - s) for s in range(0, rows, partition_rows)]
    meta = make_partition(0, 0, dim)
    n = len(sizes)
    ddf = dd.from_map(make_partition, range(n), sizes, [dim] * n, [null_every] * n, meta=meta, enforce_metadata=False)
    return ddf, sizes


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_partition(fmt: str, out: Path, i: int, n: int) -> tuple[np.ndarray, list[str]]:
    if fmt == "parquet":
        table = pq.read_table(out / part_name(i, n))
        x = embeddings_to_numpy(table.column("embedding").to_pandas(types_mapper=pd.ArrowDtype))
        return x, table.column("key").to_pylist()
    if fmt.startswith("laion"):
        names = file_names(i, n)
        x = np.load(out / names["img_emb"])
        return x, pq.read_table(out / names["metadata"]).column("key").to_pylist()
    import lance

    table = lance.dataset(str(out)).get_fragment(i).to_table()
    x = embeddings_to_numpy(table.column("embedding").to_pandas(types_mapper=pd.ArrowDtype))  # nulls: NaN rows
    return x, table.column("key").to_pylist()


def check(fmt: str, out: Path, sizes: list[int], dim: int, null_every: int) -> dict:
    """Every partition read back equals the regenerated one (bits, keys, order; the LAION
    layout holds only the rows with an embedding, the others keep null rows)."""
    for i, rows in enumerate(sizes):
        want = make_partition(i, rows, dim, null_every)
        x_want = embeddings_to_numpy(want["embedding"])
        if fmt.startswith("laion"):
            kept = want["embedding"].notna().to_numpy()
            want, x_want = want[kept], x_want[kept]
        x, keys = read_partition(fmt, out, i, len(sizes))
        if fmt == "laion16":
            same = x.dtype == np.float16 and np.array_equal(x, x_want.astype(np.float16))
        else:
            same = x.dtype == np.float32 and np.array_equal(x.view(np.uint32), x_want.view(np.uint32))
        if not same or keys != want["key"].tolist():
            return {"equal": False, "first_bad_partition": i}
    return {"equal": True, "partitions_checked": len(sizes)}


def write(fmt: str, ddf: dd.DataFrame, out: Path) -> float:
    started = time.perf_counter()
    if fmt == "parquet":
        write_parquet(ddf, out)
    elif fmt == "laion32":
        write_laion(ddf, out, dtype="float32", text_column=None)
    elif fmt == "laion16":
        write_laion(ddf, out, dtype="float16", text_column=None)
    elif fmt == "lance":
        write_lance(ddf, out)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--partition-rows", type=int, default=50_000)
    parser.add_argument("--null-every", type=int, default=0, help="every N-th row without an embedding (0: none)")
    parser.add_argument("--out", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--json", help="results file (default: benchmarks/results/formats-ROWSxDIM.json)")
    args = parser.parse_args()
    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-formats-"))
    scratch.mkdir(parents=True, exist_ok=True)
    ddf, sizes = frame(args.rows, args.dim, args.partition_rows, args.null_every)
    results: dict = {
        "rows": args.rows,
        "dim": args.dim,
        "partitions": len(sizes),
        "scheduler": "dask threaded, this process, frame persisted in memory",
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "embedding_bytes": args.rows * args.dim * 4,
        "null_every": args.null_every,
    }
    try:
        with dask.config.set(scheduler="threads"):
            started = time.perf_counter()
            ddf = ddf.persist()
            results["generate_seconds"] = time.perf_counter() - started
            runs: list[dict] = []
            for i, fmt in enumerate(["parquet", "laion32", "laion16", "lance", "parquet"]):
                out = scratch / f"{fmt}-{i}"
                shutil.rmtree(out, ignore_errors=True)
                seconds = write(fmt, ddf, out)
                run = {"format": fmt, "seconds": seconds, "rows_per_second": args.rows / seconds}
                run["bytes_on_disk"] = folder_bytes(out)
                run["read_back"] = check(fmt, out, sizes, args.dim, args.null_every)
                print(json.dumps(run), flush=True)
                runs.append(run)
                if i not in (0, 4):
                    shutil.rmtree(out)  # the disk holds the two Parquet runs and one other at a time
        parquet = [r["seconds"] for r in runs if r["format"] == "parquet"]
        base = float(np.mean(parquet))
        results["parquet_drift"] = parquet[1] / parquet[0]
        results["runs"] = runs
        results["throughput_vs_parquet"] = {r["format"]: base / r["seconds"] for r in runs if r["format"] != "parquet"}
    finally:
        if not args.out:
            shutil.rmtree(scratch, ignore_errors=True)
    nulls = f"-nulls{args.null_every}" if args.null_every else ""
    path = Path(args.json) if args.json else RESULTS / f"formats-{args.rows}x{args.dim}{nulls}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
