"""Dedup on real image embeddings: the bundled sample (319 images, 36 planted copies).

The images are embedded with a real architecture, open_clip ViT-B-32 — with **random weights**
(``pretrained=None``): no pretrained weights can be downloaded here. ``ImageEmbedder`` was mid
refactor on this branch, so the script calls the same pieces it runs per partition:
``decode_bytes`` (Pillow), ``get_model(ModelSpec(...))`` and ``encode_images`` (the model's own
open_clip preprocessing, L2-normalised). A random ViT maps pictures into a narrow cone, so what its embeddings tell
apart is pixel-level likeness, not meaning; the thresholds that separate planted copies from
other pictures are therefore much tighter than CLIP's (the script reports the similarity of
every planted copy to its original and of every image to its nearest non-copy).

Then ``semantic_dedup`` runs border-aware (the default) and plain (``border_aware=False``) on
the same centroids, at several eps, and reports the planted copies caught
(:func:`dask_clip.demo.score_planted`), the other rows flagged, how many planted pairs the
k-means split across clusters, and whether the flagged set equals a brute force over all
pairs (ranked by the same keep rule).

Usage::

    python benchmarks/dedup_real.py            # -> benchmarks/results/dedup-real-sample.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--n-clusters", type=int, default=8)
    p.add_argument("--eps", type=float, nargs="+", default=[0.0005, 0.001, 0.002, 0.005])
    p.add_argument("--out", type=Path, default=RESULTS / "dedup-real-sample.json")
    a = p.parse_args(argv)

    import dask
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa
    import torch

    from dask_clip.dedup import semantic_dedup, train_centroids
    from dask_clip.demo import planted_groups, sample_path, score_planted
    from dask_clip.embed.infer import encode_images
    from dask_clip.image.decode import decode_bytes
    from dask_clip.models import get_model
    from dask_clip.models.spec import ModelSpec

    torch.set_num_threads(os.cpu_count() or 1)
    df = pd.read_parquet(sample_path())
    loaded = get_model(ModelSpec(a.model, pretrained=None, precision="fp32", device="cpu"))
    t0 = time.perf_counter()
    decoded = [decode_bytes(v)[0] for v in df["jpg"]]
    valid = np.array([d is not None for d in decoded])
    images = [torch.from_numpy(np.ascontiguousarray(d)) for d in decoded if d is not None]
    z = encode_images(loaded, images, batch_size=32).cpu().numpy()
    embed_s = time.perf_counter() - t0
    x = np.full((len(df), z.shape[1]), np.nan, np.float32)
    x[valid] = z
    print(f"embedded {len(df)} images in {embed_s:.1f} s, {valid.sum()} with an embedding", flush=True)
    column = pa.array([list(r) if ok else None for r, ok in zip(x, valid)], type=pa.list_(pa.float32()))
    emb = df.drop(columns=["jpg"]).assign(embedding=pd.arrays.ArrowExtensionArray(column))
    emb = emb.set_index("key", drop=False)
    xs = np.where(valid[:, None], x, 0).astype(np.float64)
    xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-300)
    sim = xs @ xs.T
    keys = emb["key"].to_numpy()
    pos = {k: i for i, k in enumerate(keys)}
    groups = planted_groups(emb)
    member = {m: g for g, ms in groups.items() for m in ms}
    copy_sims = [float(sim[pos[m], pos[g]]) for g, ms in groups.items() for m in ms if m != g]
    # each valid image's most similar image outside its own planted group
    other = sim.copy()
    np.fill_diagonal(other, -2)
    for i, k in enumerate(keys):
        if k in member:
            for m in groups[member[k]]:
                other[i, pos[m]] = -2
    other[:, ~valid] = -2
    nearest_other = other.max(axis=1)[valid]

    ddf = dd.from_pandas(emb, npartitions=4, sort=False)
    records = []
    with dask.config.set(scheduler="threads"):
        c = train_centroids(ddf, "embedding", a.n_clusters, max_iter=50, seed=0)
        labels = np.argmax(xs @ c.astype(np.float64).T, axis=1)
        split = sum(
            labels[pos[m]] != labels[pos[g]] for g, ms in groups.items() for m in ms if m != g and valid[pos[m]]
        )
        for eps in a.eps:
            for border in (True, False):
                out = semantic_dedup(ddf, centroids=c, eps=eps, id_column="key", border_aware=border).compute()
                score = score_planted(out)
                rec = {
                    "eps": eps,
                    "mode": "border-aware" if border else "plain",
                    "planted": score["planted"],
                    "caught": score["caught"],
                    "missed_groups": score["missed_groups"],
                    "other_flagged": score["other_flagged"],
                }
                if border:  # brute force over all pairs, ranked by the same keep rule ("hard")
                    cl = out["cluster"].to_numpy()
                    key = np.where(valid, np.einsum("ij,ij->i", xs, c.astype(np.float64)[np.maximum(cl, 0)]), 0)
                    key = key.astype(np.float32).astype(np.float64)
                    idx = np.flatnonzero(valid)
                    order = idx[np.lexsort((idx, key[idx]))]
                    s = sim[np.ix_(order, order)]
                    s[np.triu_indices(len(order))] = -np.inf
                    truth = np.zeros(len(keys), bool)
                    truth[order] = (s.max(axis=1) >= 1 - eps) & (np.arange(len(order)) > 0)
                    rec["equals_brute_force_all_pairs"] = bool(np.array_equal(truth, out["duplicate"].to_numpy()))
                records.append(rec)
                print(rec, flush=True)
    result = {
        "model": f"open_clip {a.model}, RANDOM weights (pretrained=None; no weights can be downloaded here)",
        "sample": str(sample_path().name),
        "rows": len(df),
        "embedded": int(valid.sum()),
        "embed_seconds": round(embed_s, 1),
        "n_clusters": a.n_clusters,
        "planted_pairs_split_across_clusters": int(split),
        "copy_to_original_cosine": {
            "min": round(min(copy_sims), 5),
            "median": round(float(np.median(copy_sims)), 5),
        },
        "nearest_non_copy_cosine": {
            "median": round(float(np.median(nearest_other)), 5),
            "max": round(float(nearest_other.max()), 5),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "records": records,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
