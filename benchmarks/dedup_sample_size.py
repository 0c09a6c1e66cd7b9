"""Border rows per row against the k-means sample size, on the 10M-row isotropic set's distribution.

The scale benchmark's isotropic data at ``--rows`` rows has ``rows / 1000`` random centres;
k = sqrt(rows / 2). For each sample size, spherical k-means (faiss, ``--max-iter``) is trained
on the first rows of the generator, then border rows per row are counted on ``--held-out``
rows of a later chunk that k-means never saw, at ``border_margin`` 1 and 0.5. Only the chunks
needed are generated (nothing is written to disk).

Usage::

    python benchmarks/dedup_sample_size.py                 # 131,072 / 262,144 / 572,416 rows
    python benchmarks/dedup_sample_size.py --samples 131072 --held-out 4000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from dedup_data import isotropic_chunks

RESULTS = Path(__file__).parent / "results"


def measure(rows: int, sample_rows: int, held_out: int, max_iter: int, chunk: int = 50_000) -> dict:
    import torch

    from dask_clip.dedup import border, kmeans

    k = round(np.sqrt(rows / 2))
    gen = isotropic_chunks(rows, 512, seed=0, chunk=chunk)
    chunks = [next(gen)[0] for _ in range(sample_rows // chunk + 2)]
    x = np.concatenate(chunks[:-1])[:sample_rows]
    t0 = time.perf_counter()
    centroids = torch.from_numpy(kmeans.fit_centroids(x, k, max_iter=max_iter, seed=0))
    fit_s = time.perf_counter() - t0
    unseen = torch.from_numpy(chunks[-1][:held_out])
    sims = unseen @ centroids.T
    labels = sims.argmax(dim=1)
    per_row = {}
    for fraction in (1.0, 0.5):
        found, _, _ = border.split_border_rows(sims, labels, centroids, border.margin_scale(0.01, fraction))
        per_row[f"border_margin_{fraction:g}"] = round(len(found) / held_out, 4)
    return {
        "rows": rows,
        "n_clusters": k,
        "sample_rows": sample_rows,
        "sample_rows_per_centroid": round(sample_rows / k, 1),
        "held_out_rows": held_out,
        "kmeans_seconds": round(fit_s, 1),
        "border_rows_per_row": per_row,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--samples", type=int, nargs="+", default=[131_072, 262_144, 572_416])
    p.add_argument("--held-out", type=int, default=8_000)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "dedup-sample-size.json")
    a = p.parse_args(argv)
    records = []
    for n in a.samples:
        rec = measure(a.rows, n, a.held_out, a.max_iter)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    a.out.write_text(json.dumps({"eps": 0.01, "max_iter": a.max_iter, "runs": records}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
