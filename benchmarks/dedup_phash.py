"""pHash / dHash near-duplicates: recall and precision at each Hamming threshold k, and speed.

Sets:

- ``demo``: the bundled sample (319 images, 36 planted copies: re-encoded, slightly resized or
  brightened), truth from its ``planted_duplicate_of`` column.
- ``synthetic``: ``--rows`` procedural images (random smooth colour fields with shapes, sides
  in ``--sides``, default 64-128 px) and, for 5 % of them, one planted copy each of: JPEG
  re-encode at quality 40, resize to 50-80 %, crop of 5 % or 10 % per side. Built and hashed in
  ``--processes`` processes (chunks of 1,000 originals, each seeded on its own).

Recall: planted (copy, original) pairs within k bits. Precision: of all pairs within k bits
(brute force over the hashes), those that are planted pairs (same source). Also: hashing
speed (images per CPU second) and ``phash_duplicates`` time on Dask's threaded scheduler.

Usage::

    python benchmarks/dedup_phash.py --rows 100000 --out benchmarks/results/dedup-phash-100k.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KS = (0, 2, 4, 6, 8, 10, 12)


def procedural(rng: np.random.Generator, sides: tuple[int, int] = (96, 192)) -> np.ndarray:
    """A random smooth colour field with a few shapes: uint8 (H, W, 3), sides in ``sides``."""
    h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, f = rng.uniform(-1, 1, 3)
        img[..., c] = 127 + 100 * np.sin(6 * f * (a * x + b * y) + rng.uniform(0, 6))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(im)


def jpeg(px: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def copies(px: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = px.shape[:2]
    f = rng.uniform(0.5, 0.8)
    out = {"reencode-q40": jpeg(px, 40)}
    out["resize"] = jpeg(np.asarray(Image.fromarray(px).resize((int(w * f), int(h * f)), Image.Resampling.BICUBIC)), 90)
    for frac in (0.05, 0.10):
        dy, dx = int(h * frac), int(w * frac)
        out[f"crop-{int(frac * 100)}%"] = jpeg(px[dy : h - dy, dx : w - dx], 90)
    return out


# Originals per generation chunk: each chunk has its own seeded generator, so the set is the
# same however many processes build it.
CHUNK = 1000


def synthetic_chunk(task: tuple[int, int, int, tuple[int, int], bool]) -> dict:
    """One chunk of the synthetic set, hashed where it is made (only hashes cross processes).

    ``task`` = (seed, chunk number, originals, sides, keep JPEG bytes). Returns ``phash``,
    ``dhash`` (uint64), ``source`` (original's global number), ``kind``, the CPU seconds of each
    hash, and with ``keep`` the images as JPEG bytes (quality 90; then the hashes are of the
    decoded bytes).
    """
    from dask_clip.dedup.phash import dhash_pixels, phash_pixels

    seed, chunk, n_orig, sides, keep = task
    rng = np.random.default_rng([seed, chunk])
    images, source, kind = [], [], []
    for i in range(chunk * CHUNK, chunk * CHUNK + n_orig):
        px = jpeg(procedural(rng, sides), 90)
        images.append(px), source.append(i), kind.append("original")
        if rng.random() < 0.05:
            for name, c in copies(px, rng).items():
                images.append(c), source.append(i), kind.append(name)
    out: dict = {"source": np.array(source), "kind": kind}
    if keep:  # hashed as stored: the decoded JPEG, as ``embed --phash`` hashes it
        out["blobs"] = []
        for px in images:
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="JPEG", quality=90)
            out["blobs"].append(buf.getvalue())
        images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in out["blobs"]]
    t0 = time.process_time()
    out["phash"] = phash_pixels(images)
    out["phash_cpu_s"] = time.process_time() - t0
    t0 = time.process_time()
    out["dhash"] = dhash_pixels(images)
    out["dhash_cpu_s"] = time.process_time() - t0
    return out


def synthetic(
    rows: int, seed: int = 0, sides: tuple[int, int] = (96, 192), processes: int = 2, keep: bool = False
) -> dict:
    """The synthetic set (about ``rows`` images), built in ``processes`` processes.

    Returns the concatenated :func:`synthetic_chunk` outputs.
    """
    from multiprocessing import get_context

    n_orig = int(rows / (1 + 0.05 * 4))
    tasks = [(seed, c, min(CHUNK, n_orig - c * CHUNK), sides, keep) for c in range(-(-n_orig // CHUNK))]
    if processes > 1:
        with get_context("spawn").Pool(processes) as pool:
            parts = pool.map(synthetic_chunk, tasks)
    else:
        parts = [synthetic_chunk(t) for t in tasks]
    out: dict = {k: np.concatenate([p[k] for p in parts]) for k in ("phash", "dhash", "source")}
    out["kind"] = [k for p in parts for k in p["kind"]]
    out["phash_cpu_s"] = sum(p["phash_cpu_s"] for p in parts)
    out["dhash_cpu_s"] = sum(p["dhash_cpu_s"] for p in parts)
    if keep:
        out["blobs"] = [b for p in parts for b in p["blobs"]]
    return out


def demo() -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    import pandas as pd

    from dask_clip.demo import sample_path

    df = pd.read_parquet(sample_path())
    key_to_i = {k: i for i, k in enumerate(df["key"])}
    source = [key_to_i.get(o, i) if isinstance(o, str) else i for i, o in enumerate(df["planted_duplicate_of"])]
    kind = ["copy" if isinstance(o, str) else "original" for o in df["planted_duplicate_of"]]
    decoded = {}
    for i, b in enumerate(df["jpg"]):
        with contextlib.suppress(Exception):  # the sample holds a few broken files on purpose: left out
            decoded[i] = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    rows = [i for i in decoded if source[i] in decoded]
    return [decoded[i] for i in rows], np.array([source[i] for i in rows]), [kind[i] for i in rows]


def score(h: np.ndarray, source: np.ndarray, kind: list[str]) -> list[dict]:
    """Recall per copy kind and precision over all pairs, at each k (brute force, blocked).

    Every pair ``i < j`` is compared; only those within ``max(KS)`` bits (few) are kept.
    """
    from dask_clip.dedup.phash import hamming

    n = len(h)
    is_copy = np.array([k != "original" for k in kind])
    orig_of = {s: i for i, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    copy_d = np.array([int(hamming(h[i], h[orig_of[source[i]]])) for i in np.flatnonzero(is_copy)])
    copy_kind = np.array([kind[i] for i in np.flatnonzero(is_copy)])
    dists, same = [], []
    for s in range(0, n, 2048):
        d = hamming(h[s : s + 2048, None], h[None, :])
        i, j = np.nonzero(d <= max(KS))
        upper = j > s + i  # pairs i < j
        i, j = i[upper], j[upper]
        dists.append(d[i, j].astype(np.int16))
        same.append(source[s + i] == source[j])
    dv, sv = np.concatenate(dists), np.concatenate(same)
    out = []
    for k in KS:
        rec = {"k": k, "recall": round(float((copy_d <= k).mean()), 4) if len(copy_d) else None}
        for name in sorted(set(copy_kind)):
            rec[f"recall_{name}"] = round(float((copy_d[copy_kind == name] <= k).mean()), 4)
        m = dv <= k
        rec["pairs_within_k"] = int(m.sum())
        rec["precision"] = round(int((m & sv).sum()) / int(m.sum()), 4) if m.any() else None
        out.append(rec)
    return out


def run(
    name: str, rows: int, sides: tuple[int, int], processes: int, score_dhash: bool = True, time_ks=(6, 10)
) -> dict:
    import dask
    import dask.dataframe as dd
    import pandas as pd

    from dask_clip.dedup.phash import dhash_pixels, phash_duplicates, phash_pixels

    t0 = time.perf_counter()
    if name == "demo":
        images, source, kind = demo()
        t1 = time.process_time()
        ph = phash_pixels(images)
        ph_s = time.process_time() - t1
        t1 = time.process_time()
        dh = dhash_pixels(images)
        dh_s = time.process_time() - t1
    else:
        built = synthetic(rows, sides=sides, processes=processes)
        ph, dh, source, kind = built["phash"], built["dhash"], built["source"], built["kind"]
        ph_s, dh_s = built["phash_cpu_s"], built["dhash_cpu_s"]
    rec: dict = {"set": name, "images": len(ph), "copies": int(sum(k != "original" for k in kind))}
    if name != "demo":
        rec["sides"] = list(sides)
    rec["build_seconds"] = round(time.perf_counter() - t0, 1)
    # CPU seconds in the hashing processes (wall time of one process per image)
    rec["phash_images_per_cpu_s"] = round(len(ph) / ph_s, 1)
    rec["dhash_images_per_cpu_s"] = round(len(dh) / dh_s, 1)
    t0 = time.perf_counter()
    rec["phash"] = score(ph, source, kind)
    if score_dhash:
        rec["dhash"] = score(dh, source, kind)
    rec["score_seconds"] = round(time.perf_counter() - t0, 1)
    df = pd.DataFrame({"phash": pd.array(ph, dtype="UInt64")})
    with dask.config.set(scheduler="threads", num_workers=2):
        for k in time_ks:
            t0 = time.perf_counter()
            out = phash_duplicates(dd.from_pandas(df, npartitions=4, sort=False), k=k).compute()
            rec[f"phash_duplicates_k{k}_seconds"] = round(time.perf_counter() - t0, 2)
            rec[f"phash_duplicates_k{k}_flagged"] = int(out["duplicate"].sum())
    print(json.dumps({k: v for k, v in rec.items() if k not in ("phash", "dhash")}), flush=True)
    for r in rec["phash"]:
        print("  phash", r, flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["demo", "synthetic"])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--sides", type=int, nargs=2, default=[64, 128], help="synthetic images' side range, px")
    p.add_argument("--time-k", type=int, nargs="+", default=[6, 10], help="k values phash_duplicates is timed at")
    p.add_argument("--no-dhash-score", action="store_true", help="score pHash only (brute force is n^2)")
    p.add_argument("--processes", type=int, default=2, help="processes building the synthetic set")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup-phash.json")
    a = p.parse_args(argv)
    load = os.getloadavg()
    records = [run(s, a.rows, tuple(a.sides), a.processes, not a.no_dhash_score, a.time_k) for s in a.sets]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_1_5_15_at_start": [round(v, 2) for v in load],
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "records": records,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
