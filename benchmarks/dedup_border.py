"""Recall and cost of border-aware dedup against plain SemDeDup, on sets with planted pairs.

Sets (see ``dedup_data.py``):

- ``issue``: 20k x 64, 40 weak isotropic clusters (centre + 3 x noise, k = 40), 400 pairs at
  cosine >= 0.999 and 200 at 0.95-0.99, like the set of the issue; truth by brute force over
  all pairs.
- ``clip-like``: CLIP-like 200k x 512, k = sqrt(n/2) = 316; planted: 2,000 pairs of random
  rows (turned anisotropically, cosine uniform in [1 - eps, 1)), 300 pairs straddling the
  midpoint of two neighbouring centroids and pairs at three-cluster junctions (each row's
  second-nearest centroid a third cluster).
- ``isotropic``: 200k x 512 around 200 random centres (the scale benchmark's older set),
  k = 316, the same plantings.

For each set and eps (0.01, 0.05): centroids are trained once (the plantings on borders
need them), then plain SemDeDup and border-aware dedup run on the same centroids, alternately,
``--repeats`` times (the minimum counts), on Dask's threaded scheduler (2 threads, one torch
thread each). Recall = planted pairs (or, for ``issue``, all pairs within eps) with at least
one row flagged. Time ratio = border-aware / plain, of the dedup after k-means and of the whole
run with the k-means time added to both. Also: border rows per row, and how many of the
``(own rows) x (border rows)`` products the bound lets the pairwise step skip.

Usage::

    python benchmarks/dedup_border.py                     # all sets -> results/dedup-border.json + .png
    python benchmarks/dedup_border.py --sets issue --repeats 1
    python benchmarks/dedup_border.py --from-json benchmarks/results/dedup-border.json
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
from dedup_data import ClipLike, isotropic_rows, turn, unit

RESULTS = Path(__file__).parent / "results"
EPS = (0.01, 0.05)


def frame(x: np.ndarray):
    import pandas as pd
    import pyarrow as pa

    n, d = x.shape
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))
    return pd.DataFrame({"id": np.arange(n), "embedding": pd.arrays.ArrowExtensionArray(emb)})


def brute_force_pairs(x: np.ndarray, eps: float, block: int = 4096) -> np.ndarray:
    """All pairs (i < j) with cosine >= 1 - eps (float32 matmul, float64 compare): int64 (m, 2)."""
    out = []
    for s in range(0, len(x), block):
        sim = x[s : s + block] @ x.T
        i, j = np.nonzero(sim.astype(np.float64) >= 1 - eps)
        keep = j > i + s
        out.append(np.stack([i[keep] + s, j[keep]], axis=1))
    return np.concatenate(out)


def border_pairs(c: np.ndarray, rng: np.random.Generator, eps: float, n_straddle: int, n_junction: int) -> np.ndarray:
    """Pairs planted across borders of the centroids ``c``: float32 (2m, d), consecutive rows pair up."""
    k, d = c.shape
    near = np.argsort(-(c @ c.T), axis=1)[:, 1:4]
    rows = []
    for _ in range(n_straddle):
        a = int(rng.integers(k))
        b = int(near[a, rng.integers(3)])
        mid = unit(c[a] + c[b])
        step = unit(c[a] - c[b])
        wobble = unit(rng.standard_normal(d).astype(np.float32))
        # the pair's difference partly along c_a - c_b: a border split by construction
        half = np.sqrt(2 * eps * rng.uniform(0.05, 0.95)) / 2
        u, v = unit(mid + half * step + 0.3 * half * wobble), unit(mid - half * step)
        rows += [u, v]
    found = 0
    for _ in range(100 * n_junction):
        if found == n_junction:
            break
        a, b, m = rng.choice(k, 3, replace=False)
        mid = unit(c[a] + c[b] + c[m])
        if set(np.argsort(-(c @ mid))[:3].tolist()) != {a, b, m}:
            continue
        ua, ub, um = (unit(c[i] - (c[i] @ mid) * mid) for i in (a, b, m))
        t = np.sqrt(2 * eps) * 0.3
        u, v = unit(mid + t * (ua + 0.45 * um)), unit(mid + t * (ub + 0.5 * um))
        if u @ v >= 1 - eps and np.argmax(c @ u) == a and np.argmax(c @ v) == b:
            rows += [u, v]
            found += 1
    return np.array(rows, np.float32)


def make_set(name: str, eps: float, seed: int = 0, n: int = 200_000):
    """(x float32 (n, d), planted pairs int64 (m, 2) or None, centroids, k, truth pairs or None, info)."""
    from dask_clip.dedup.kmeans import fit_centroids

    rng = np.random.default_rng(seed)
    if name == "issue":
        n, d, k = 20_000, 64, 40
        centres = unit(rng.standard_normal((k, d)).astype(np.float32))
        # weak clusters (cosine to the centre ~0.3): k-means borders cross dense regions
        x = unit(centres[rng.integers(0, k, n)] + 3.0 * unit(rng.standard_normal((n, d)).astype(np.float32)))
        src = rng.permutation(n)[:1200]
        a, b = src[:600], src[600:]
        x[b[:400]] = turn(x[a[:400]], rng, 0.999, 0.99999)
        x[b[400:]] = turn(x[a[400:]], rng, 0.95, 0.99)
        c = fit_centroids(x, k, max_iter=20, seed=seed)
        return x, np.stack([a, b], 1), c, k, brute_force_pairs(x, eps), {"planted": "400 at >= 0.999, 200 at 0.95-0.99"}
    d = 512
    k = int(np.sqrt(n / 2))
    if name == "clip-like":
        dist = ClipLike.build(d, seed)
        x = dist.rows(rng, n)
        directions = lambda m: dist.directions(rng, m)  # noqa: E731
    else:
        centres = unit(rng.standard_normal((n // 1000, d)).astype(np.float32))
        x = isotropic_rows(rng, centres, n)
        directions = lambda m: None  # noqa: E731
    c = fit_centroids(x[rng.choice(n, min(n, 256 * k), replace=False)], k, max_iter=20, seed=seed)
    src = rng.permutation(n)[:4000]
    a, b = src[:2000], src[2000:]
    x[b] = turn(x[a], rng, 1 - eps, 1.0, directions(2000))
    extra = border_pairs(c, rng, eps, 300, 60)
    m = len(extra) // 2
    x = np.concatenate([x, extra])
    pairs = np.concatenate([np.stack([a, b], 1), n + np.arange(2 * m).reshape(m, 2)])
    info = {"random_pairs": 2000, "border_pairs": m}
    return x, pairs, c, k, None, info


def block_stats(x: np.ndarray, c: np.ndarray, eps: float, margin: float) -> dict:
    """Border rows per row, and the (own x border) products computed vs. the rectangle."""
    from dask_clip.dedup.border import margin_scale
    from dask_clip.dedup.workflow import sample_block_counts

    own, guests = sample_block_counts(x, c, margin_scale(eps, margin))
    plain = float((own * (own - 1) / 2).sum())
    rect = float((own * guests).sum())
    return {
        "border_rows_per_row": round(float(guests.sum() / len(x)), 4),
        "plain_pairs": plain,
        "border_rectangle_over_plain": round(rect / plain, 4),
    }


def run_set(name: str, eps: float, repeats: int, seed: int, margin: float = 1.0, rows: int = 200_000) -> dict:
    import dask
    import dask.dataframe as dd

    from dask_clip.dedup import semantic_dedup
    from dask_clip.dedup.kmeans import fit_centroids

    t0 = time.perf_counter()
    x, pairs, c, k, truth, info = make_set(name, eps, seed, n=rows)
    print(f"[{name} eps={eps}] {x.shape} k={k} built in {time.perf_counter() - t0:.1f} s", flush=True)
    sample = x[np.random.default_rng(seed).choice(len(x), min(len(x), 256 * k), replace=False)]
    t0 = time.perf_counter()
    fit_centroids(sample, k, max_iter=20, seed=seed)  # the k-means both modes share, timed once
    kmeans_s = time.perf_counter() - t0
    df = frame(x)
    ddf = dd.from_pandas(df, npartitions=max(2, len(x) // 25_000), sort=False)
    times: dict[str, list[float]] = {"plain": [], "border": []}
    flags = {}
    with dask.config.set(scheduler="threads", num_workers=2):
        for _ in range(repeats):
            for mode in ("plain", "border"):
                t0 = time.perf_counter()
                border = {"border_aware": mode == "border", "border_margin": margin}
                out = semantic_dedup(ddf, centroids=c, eps=eps, **border).compute()
                times[mode].append(time.perf_counter() - t0)
                flags[mode] = out["duplicate"].to_numpy()
                cluster = out["cluster"].to_numpy()
    rec = {"set": name, "eps": eps, "border_margin": margin, "rows": len(x), "dim": x.shape[1], "k": k, **info}
    rec["load_average_1min_after"] = round(os.getloadavg()[0], 2)  # a shared machine: read ratios with it
    rec["kmeans_seconds"] = kmeans_s
    check = truth if truth is not None else pairs
    split = cluster[check[:, 0]] != cluster[check[:, 1]]
    rec["pairs_checked"] = len(check)
    rec["pairs_split_across_clusters"] = int(split.sum())
    for mode in ("plain", "border"):
        f = flags[mode]
        found = f[check[:, 0]] | f[check[:, 1]]
        rec[f"recall_{mode}"] = round(float(found.mean()), 6)
        rec[f"missed_{mode}"] = int((~found).sum())
        if truth is None:  # random pairs and pairs built across borders, apart
            rec[f"recall_{mode}_random_pairs"] = round(float(found[: info["random_pairs"]].mean()), 6)
            rec[f"recall_{mode}_border_pairs"] = round(float(found[info["random_pairs"] :].mean()), 6)
        rec[f"seconds_{mode}"] = round(min(times[mode]), 2)
        rec[f"seconds_{mode}_all"] = [round(t, 2) for t in times[mode]]
    if truth is not None:  # every flagged row must have a partner within eps (no false positive)
        has = np.zeros(len(x), bool)
        has[truth.ravel()] = True
        rec["false_flags_border"] = int((flags["border"] & ~has).sum())
    rec["time_ratio_dedup"] = round(rec["seconds_border"] / rec["seconds_plain"], 3)
    rec["time_ratio_with_kmeans"] = round((rec["seconds_border"] + kmeans_s) / (rec["seconds_plain"] + kmeans_s), 3)
    rec.update(block_stats(x, c, eps, margin))
    print(
        f"  recall plain {rec['recall_plain']:.4f} ({rec['missed_plain']} missed) border {rec['recall_border']:.4f} "
        f"({rec['missed_border']} missed); {rec['border_rows_per_row']} border rows/row; time plain "
        f"{rec['seconds_plain']} s border {rec['seconds_border']} s (x{rec['time_ratio_dedup']}; "
        f"x{rec['time_ratio_with_kmeans']} with k-means {kmeans_s:.1f} s)",
        flush=True,
    )
    return rec


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['set']}\neps {r['eps']}\nmargin {r.get('border_margin', 1.0)}" for r in records]
    pos = np.arange(len(records))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.bar(pos - 0.2, [1 - r["recall_plain"] for r in records], 0.4, label="plain SemDeDup")
    a.bar(pos + 0.2, [max(1 - r["recall_border"], 1e-5) for r in records], 0.4, label="border-aware")
    a.axhline(1e-3, color="k", ls="--", lw=1, label="goal: miss rate 0.001")
    a.set_yscale("log"), a.set_xticks(pos, labels, fontsize=8), a.set_title("miss rate (1 - recall; 1e-5 = none)")
    a.legend(fontsize=8)
    b.bar(pos - 0.2, [r["time_ratio_dedup"] for r in records], 0.4, label="dedup after k-means")
    b.bar(pos + 0.2, [r["time_ratio_with_kmeans"] for r in records], 0.4, label="with k-means")
    b.axhline(1.5, color="k", ls="--", lw=1, label="goal 1.5x")
    b.set_xticks(pos, labels, fontsize=8), b.set_title("time, border-aware / plain"), b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["issue", "clip-like", "isotropic"])
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--margin", type=float, default=1.0, help="border_margin of the border-aware runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=200_000, help="rows of the clip-like and isotropic sets")
    p.add_argument("--out", type=Path, default=RESULTS / "dedup-border.json")
    p.add_argument("--from-json", type=Path, nargs="+", help="plot these results files together")
    a = p.parse_args(argv)
    if a.from_json:
        records = [r for f in a.from_json for r in json.loads(f.read_text())["records"]]
        plot(records, a.from_json[0].with_suffix(".png"))
        return
    import torch

    torch.set_num_threads(1)
    records = [run_set(s, e, a.repeats, a.seed, a.margin, a.rows) for s in a.sets for e in a.eps]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "scheduler": "dask threads, 2 workers, torch 1 thread each; same centroids for both modes",
        "note": "shared 2-core machine: other jobs may run at the same time; ratios are within one run",
        "records": records,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")
    plot(records, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
