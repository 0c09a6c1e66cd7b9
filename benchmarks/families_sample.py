"""Issue 23's 'notebook-sized sample': the bundled 319-image sample through `dask-clip embed`
(a subprocess with its own 2-worker local cluster) with each family's tiny seeded folder,
captions included. Checks every decodable row has an image and a text embedding of the
family's width, and prints seconds per run.

    python benchmarks/families_sample.py

Run on 2026-12-07 (2-core VM, load 1.2): every family 319 rows, 316 embedded, 3 errors (the
sample's broken rows), captions 319, unit norms; 21.6 s (SigLIP), 52.7 s (EVA-02), 41.3 s
(MobileCLIP), 23.3 s (transformers SigLIP) for the whole process.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dask_clip.testing.families import OPEN_CLIP_FAMILY_CFGS, write_open_clip_family_dir, write_transformers_siglip_dir

sample = Path("dask_clip/data/sample.parquet").resolve()
tmp = Path(tempfile.mkdtemp(prefix="families-sample-"))
(tmp / "in").mkdir()
(tmp / "in" / "sample.parquet").symlink_to(sample)
folders = {f"open_clip {n}": write_open_clip_family_dir(tmp / n, n) for n in OPEN_CLIP_FAMILY_CFGS}
folders["transformers siglip (gemma)"] = write_transformers_siglip_dir(tmp / "hf-siglip", tokenizer="gemma")
for name, folder in folders.items():
    out = tmp / ("out-" + name.replace(" ", "-").replace("(", "").replace(")", ""))
    cmd = [
        sys.executable,
        "-m",
        "dask_clip.cli",
        "embed",
        str(tmp / "in"),
        str(out),
        "--model-dir",
        str(folder),
        "--image-column",
        "jpg",
        "--text-column",
        "caption",
        "--n-workers",
        "2",
        "--dashboard-address",
        "none",
        "--no-progress",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if proc.returncode:
        print(name, "FAILED", proc.stderr[-1500:])
        continue
    df = pd.read_parquet(out)
    ok = df["embedding"].notna()
    dims = {len(v) for v in df.loc[ok, "embedding"]}
    tdims = {len(v) for v in df.loc[df["text_embedding"].notna(), "text_embedding"]}
    norms = np.linalg.norm(np.stack(df.loc[ok, "embedding"].to_numpy()), axis=1)
    print(
        f"{name}: {len(df)} rows, {int(ok.sum())} embedded, {int(df['embedding_error'].notna().sum())} errors, "
        f"width {dims}, text width {tdims}, text rows {int(df['text_embedding'].notna().sum())}, "
        f"unit norm {bool(np.allclose(norms, 1, atol=1e-3))}, clip_score {'clip_score' in df}, {secs:.1f} s"
    )
