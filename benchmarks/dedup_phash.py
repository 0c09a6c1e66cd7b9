"""pHash / dHash near-duplicates: recall and precision at each Hamming threshold k, and speed.

Sets:

- ``demo``: the bundled sample (319 images, 36 planted copies: re-encoded, slightly resized or
  brightened), truth from its ``planted_duplicate_of`` column.
- ``synthetic``: ``--rows`` procedural images (random smooth colour fields with shapes, 96-192
  px) and, for 5 % of them, one planted copy each of: JPEG re-encode at quality 40, resize to
  50-80 %, crop of 5 % or 10 % per side.

Recall: planted (copy, original) pairs within k bits. Precision: of all pairs within k bits
(brute force over the hashes), those that are planted pairs (same source). Also: hashing
speed (images/s, one process) and ``phash_duplicates`` time on Dask's threaded scheduler.

Usage::

    python benchmarks/dedup_phash.py --rows 20000 --out benchmarks/results/dedup-phash.json
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


def procedural(rng: np.random.Generator) -> np.ndarray:
    """A random smooth colour field with a few shapes: uint8 (H, W, 3)."""
    h, w = (int(v) for v in rng.integers(96, 193, 2))
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


def synthetic(rows: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Images, source id per image (copies share their original's), kind per image."""
    rng = np.random.default_rng(seed)
    n_orig = int(rows / (1 + 0.05 * 4))
    images, source, kind = [], [], []
    for i in range(n_orig):
        px = jpeg(procedural(rng), 90)
        images.append(px), source.append(i), kind.append("original")
        if rng.random() < 0.05:
            for name, c in copies(px, rng).items():
                images.append(c), source.append(i), kind.append(name)
    return images, np.array(source), kind


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
    """Recall per copy kind and precision over all pairs, at each k (brute force, blocked)."""
    from dask_clip.dedup.phash import hamming

    n = len(h)
    is_copy = np.array([k != "original" for k in kind])
    orig_of = {s: i for i, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    copy_d = np.array([int(hamming(h[i], h[orig_of[source[i]]])) for i in np.flatnonzero(is_copy)])
    copy_kind = np.array([kind[i] for i in np.flatnonzero(is_copy)])
    within = dict.fromkeys(KS, 0)
    true_within = dict.fromkeys(KS, 0)
    for s in range(0, n, 2048):
        d = hamming(h[s : s + 2048, None], h[None, :]).astype(np.int16)
        i, j = np.nonzero(np.arange(n)[None, :] > (s + np.arange(len(d)))[:, None])  # pairs i < j
        dv = d[i, j]
        same = source[s + i] == source[j]
        for k in KS:
            m = dv <= k
            within[k] += int(m.sum())
            true_within[k] += int((m & same).sum())
    out = []
    for k in KS:
        rec = {"k": k, "recall": round(float((copy_d <= k).mean()), 4) if len(copy_d) else None}
        for name in sorted(set(copy_kind)):
            rec[f"recall_{name}"] = round(float((copy_d[copy_kind == name] <= k).mean()), 4)
        rec["pairs_within_k"] = within[k]
        rec["precision"] = round(true_within[k] / within[k], 4) if within[k] else None
        out.append(rec)
    return out


def run(name: str, rows: int) -> dict:
    import dask
    import dask.dataframe as dd
    import pandas as pd

    from dask_clip.dedup.phash import dhash_pixels, phash_duplicates, phash_pixels

    images, source, kind = demo() if name == "demo" else synthetic(rows)
    rec: dict = {"set": name, "images": len(images), "copies": int(sum(k != "original" for k in kind))}
    t0 = time.perf_counter()
    ph = phash_pixels(images)
    rec["phash_images_per_s"] = round(len(images) / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    dh = dhash_pixels(images)
    rec["dhash_images_per_s"] = round(len(images) / (time.perf_counter() - t0), 1)
    rec["phash"] = score(ph, source, kind)
    rec["dhash"] = score(dh, source, kind)
    df = pd.DataFrame({"phash": pd.array(ph, dtype="UInt64")})
    with dask.config.set(scheduler="threads", num_workers=2):
        for k in (6, 10):
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
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup-phash.json")
    a = p.parse_args(argv)
    records = [run(s, a.rows) for s in a.sets]
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "records": records}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
