"""Time to first result of ``dask-clip serve``: the README's flow on a folder of photos.

Writes the bundled sample's images as JPEG files, runs ``dask-clip embed FOLDER emb`` (with a
seeded random-weight model folder: no model hub here) and ``dask-clip index emb idx``, then
starts ``dask-clip serve idx`` ``--runs`` times and measures, from the moment the process is
started:

- ``landing_s``: the first answer of ``/api/sample`` (what the landing page shows);
- ``first_thumbnail_s``: the first thumbnail of that page;
- ``first_text_s``: the first text query's answer, sent as soon as the server answers (it
  waits for the text tower, which ``serve`` loads as it starts);
- ``text_ready_s``: the load time ``serve`` prints ("text search ready (X s)").

    python benchmarks/serve_first_result.py --model ViT-B-32 --out benchmarks/results/serve-first-result.json
    python benchmarks/serve_first_result.py --model tiny

Seconds of wall time on this machine; other processes on the same cores inflate them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dask_clip.cli", *args], check=True, capture_output=True, text=True)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read()


def one_run(index_dir: Path, port: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    log = index_dir.parent / f"serve-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dask_clip.cli", "serve", str(index_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        while True:
            try:
                sample = json.loads(get(base + "/api/sample?seed=0&k=24"))
                break
            except OSError:
                time.sleep(0.02)
        landing = time.perf_counter() - started
        get(base + "/thumb/" + sample["results"][0]["id"])
        thumbnail = time.perf_counter() - started
        get(base + "/api/search?q=a%20photo%20of%20a%20cat&k=24")
        text = time.perf_counter() - started
        time.sleep(0.2)
        ready = re.search(r"text search ready \(([\d.]+) s\)", log.read_text())
        return {
            "landing_s": round(landing, 3),
            "first_thumbnail_s": round(thumbnail, 3),
            "first_text_s": round(text, 3),
            "text_ready_s": float(ready.group(1)) if ready else float("nan"),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (the test model) or an open_clip architecture")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import pandas as pd

    from dask_clip.testing import TINY_TEXT_MODEL_CFG, write_model_dir

    work = Path(tempfile.mkdtemp(prefix="serve-first-result-"))
    photos = work / "photos"
    photos.mkdir()
    frame = pd.read_parquet(resources.files("dask_clip") / "data" / "sample.parquet")
    for key, data in zip(frame["key"], frame["jpg"]):
        (photos / f"{key}.jpg").write_bytes(data if data is not None else b"")
    if args.model == "tiny":
        cfg = TINY_TEXT_MODEL_CFG
    else:
        import open_clip

        cfg = open_clip.get_model_config(args.model)
    model = write_model_dir(work / "model", model_cfg=cfg)
    cli("embed", str(photos), str(work / "emb"), "--model-dir", str(model))
    cli("index", str(work / "emb"), str(work / "idx"))
    runs = [one_run(work / "idx", args.port + i) for i in range(args.runs)]
    result = {
        "model": args.model,
        "images": len(frame),
        "runs": runs,
        "median": {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]},
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
