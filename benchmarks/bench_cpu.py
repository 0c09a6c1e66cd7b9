"""CPU benchmark, measured the way users run it: worker processes from ``local_cluster()``.

In one run, interleaved and best of several rounds, for two inputs — web-size JPEGs in Parquet
(500x375 to 800x600) and a folder of large photos (320x240 to 1600x1200, mean 0.67 MP, 8 %
grayscale, a quarter progressive, mixed quality) — it measures:

- model-only images/s inside the worker (random preprocessed input through the model, the
  worker's torch threads), the reference of every ratio;
- end-to-end images/s of :func:`dask_clip.embed_parquet` (read, decode, resize, model, columns,
  write) for each schedule (``serial``, ``overlap``), and its ratio to model-only;
- the stage breakdown inside the worker (fetch, decode + resize, model, columns, write), wall and
  CPU seconds per image;
- the whole process of ``dask-clip embed FOLDER OUT`` (imports, cluster, model load, everything)
  on the folder of photos, its ratio to model-only, and the fixed cost of startup;
- peak RSS of a worker embedding a 256-image partition of 12 MP photos.

    python benchmarks/bench_cpu.py [--rounds 3] [--model ViT-B-32] [--photos 400]

Writes ``benchmarks/results/cpu-<model>-<date>.json`` and a bar chart of the stage breakdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# -- inputs ----------------------------------------------------------------------------------


def web_parquet(folder: Path, n: int, partitions: int, seed: int = 0) -> dict[str, Any]:
    """n web-size JPEGs (500x375 to 800x600, cut from real photos) in ``partitions`` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dask_clip.testing import encode_image, photo_crops

    blobs = [encode_image(crop, quality=85) for crop in photo_crops(n, seed=seed)]
    folder.mkdir(parents=True, exist_ok=True)
    for p, part in enumerate(np.array_split(np.arange(n), partitions)):
        table = pa.table({"key": [f"{i:06d}" for i in part], "jpg": pa.array([blobs[i] for i in part], pa.binary())})
        pq.write_table(table, folder / f"{p:05d}.parquet")
    return {"images": n, "partitions": partitions, "mean_kb": round(float(np.mean([len(b) for b in blobs])) / 1024, 1)}


def photo_folder(folder: Path, n: int, seed: int = 1, max_size: tuple[int, int] = (1600, 1200)) -> dict[str, Any]:
    """n JPEG photos from 320x240 to ``max_size`` (real photographs' content, resized, with
    sensor-like noise), 8 % grayscale, a quarter progressive, quality 70-95."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    folder.mkdir(parents=True, exist_ok=True)
    pixels, sizes = [], []
    for i in range(n):
        area = float(np.exp(rng.uniform(np.log(320 * 240), np.log(max_size[0] * max_size[1]))))
        w = int(np.clip(round((area * 4 / 3) ** 0.5), 320, max_size[0]))
        h = int(np.clip(round(w * 3 / 4 * rng.uniform(0.9, 1.1)), 240, max_size[1]))
        if rng.random() < 0.3:
            w, h = h, w  # portrait
        source = Image.fromarray(sources[i % len(sources)])
        crop = source.crop(_crop_box(source.size, w / h, rng)).resize((w, h), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(crop, np.int16) + rng.integers(-5, 6, (h, w, 3), dtype=np.int16), 0, 255)
        image = Image.fromarray(noisy.astype(np.uint8))
        if rng.random() < 0.08:
            image = image.convert("L")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)), progressive=bool(rng.random() < 0.25))
        (folder / f"{i:05d}.jpg").write_bytes(buffer.getvalue())
        pixels.append(w * h)
        sizes.append(len(buffer.getvalue()))
    return {
        "images": n,
        "mean_megapixels": round(float(np.mean(pixels)) / 1e6, 3),
        "max_size": list(max_size),
        "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
    }


def _crop_box(size: tuple[int, int], aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    w, h = size
    cw = min(w, int(h * aspect))
    ch = min(h, int(cw / aspect))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return x, y, x + cw, y + ch


# -- on the worker -------------------------------------------------------------------------------


def model_only_on_worker(kwargs: dict[str, Any], batch: int, seconds: float) -> float:
    """Images/s of the model on random preprocessed input, as the worker runs it."""
    import torch

    from dask_clip import ImageEmbedder
    from dask_clip.embed.infer import encode_inputs
    from dask_clip.models import apply_torch_threads, get_model

    apply_torch_threads()
    loaded = get_model(ImageEmbedder(**kwargs).spec)
    crops = torch.randint(0, 256, (batch, 3, *loaded.preprocess.size), dtype=torch.uint8)
    encode_inputs(loaded, crops, batch_size=batch)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or done < 2 * batch:
        encode_inputs(loaded, crops, batch_size=batch)  # normalise + forward, as the pipeline does
        done += batch
    return done / (time.perf_counter() - started)


def profile_on_worker(kwargs: dict[str, Any], paths: list[str], kind: str, schedule: str) -> dict[str, float]:
    """Seconds per stage of one partition, inside the worker: the embedder's own steps, timed."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dask_clip import ImageEmbedder
    from dask_clip.embed.pipeline import embed_rows
    from dask_clip.image.sources import get_source
    from dask_clip.io.writer import to_arrow
    from dask_clip.models import apply_torch_threads, get_model

    apply_torch_threads()
    embedder = ImageEmbedder(**kwargs, schedule=schedule)
    model = get_model(embedder.spec)
    started = time.perf_counter()
    if kind == "parquet":
        df = pd.concat([pq.read_table(p).to_pandas(types_mapper=pd.ArrowDtype) for p in paths], ignore_index=True)
        column, source = "jpg", get_source("bytes")
    else:
        df = pd.DataFrame({"path": pd.array(paths, dtype=pd.ArrowDtype(pa.string()))})
        column, source = "path", get_source("path")
    read = time.perf_counter() - started
    rows = source.rows(df, column, height_column="height", width_column="width")
    started = time.perf_counter()
    result = embed_rows(
        rows,
        source,
        model=model,
        decoder=embedder._decoder(model.device, source),
        batch_size=embedder.model_inference_batch_size,
        max_pixels=embedder.max_image_pixels,
        max_bytes=embedder.max_decode_bytes,
        schedule=schedule,
    )
    pipeline = time.perf_counter() - started
    started = time.perf_counter()
    out = dataclasses.replace(embedder, image_column=column)._assemble(df, result)
    columns = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
        pq.write_table(to_arrow(out), f.name)
    write = time.perf_counter() - started
    return {
        "images": len(df),
        "read": read,
        **result.seconds,
        "pipeline": pipeline,
        "columns": columns,
        "write": write,
        "total": read + pipeline + columns + write,
    }


def peak_rss_on_worker(kwargs: dict[str, Any], n: int) -> dict[str, float]:
    """Peak RSS of this worker process while it embeds one partition of n 12 MP photos."""
    import resource

    import pandas as pd
    import pyarrow as pa
    from PIL import Image
    from skimage import data

    from dask_clip import ImageEmbedder

    base = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    base.save(buffer, format="JPEG", quality=90)
    frame = pd.DataFrame({"image": pd.Series([buffer.getvalue()] * n, dtype=pd.ArrowDtype(pa.binary()))})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = ImageEmbedder(**kwargs).embed_partition(frame)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": n,
        "failed": int(out["embedding_error"].notna().sum()),
        "rss_before_mib": before,
        "peak_rss_mib": after,
    }


# -- on the client ---------------------------------------------------------------------------------


def end_to_end(client: Any, source: str, out: Path, kwargs: dict[str, Any], schedule: str) -> float:
    """Images/s of embed_parquet (read, embed, write) on the cluster, model already loaded."""
    from dask_clip import ImageEmbedder, embed_parquet

    embedder = ImageEmbedder(**kwargs, schedule=schedule)
    started = time.perf_counter()
    summary = embed_parquet(source, out, embedder, overwrite=True, client=client, partition_size=32)
    seconds = time.perf_counter() - started
    assert summary.counts.get("errors", 0) == 0, summary
    return summary.rows / seconds


def whole_process(folder: Path, out: Path, weights: list[str], batch: int) -> dict[str, Any]:
    """``dask-clip embed FOLDER OUT`` in a fresh process, timed from outside."""
    command = [sys.executable, "-m", "dask_clip.cli", "-v", "embed", str(folder), str(out), *weights]
    command += ["--batch-size", str(batch), "--overwrite", "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    images = len(list(folder.glob("*.jpg")))
    return {
        "command": " ".join(["dask-clip", *command[4:]]),
        "seconds": round(seconds, 2),
        "images": images,
        "img_s": round(images / seconds, 2),
        "stdout": proc.stdout.strip()[-300:],
    }


def startup_phases(model: str) -> dict[str, float]:
    """The fixed costs: importing the CLI, starting the local cluster, loading the model on it."""
    code = (
        "import time; t0 = time.perf_counter(); import dask_clip.cli, dask_clip.embed.jobs; t1 = time.perf_counter()\n"
        "from dask_clip import local_cluster; from distributed import Client\n"
        "cluster = local_cluster(dashboard_address=None); client = Client(cluster); t2 = time.perf_counter()\n"
        "from dask_clip.models import get_model; from dask_clip.models.spec import ModelSpec\n"
        f"client.submit(lambda: get_model(ModelSpec({model!r}, None)) and 0, pure=False).result(); t3 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2)\n"
        "client.close(); cluster.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    imports, cluster, model_load = (float(v) for v in out[-3:])
    return {
        "import_s": round(imports, 2),
        "cluster_start_s": round(cluster, 2),
        "model_load_on_worker_s": round(model_load, 2),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["read", "fetch", "decode+resize", "model", "columns", "write"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for row, prof in enumerate(result["profile"].values()):
        left = 0.0
        for stage in stages:
            ms = prof.get(stage, 0.0) * 1000 / prof["images"]
            ax.barh(row, ms, left=left, label=stage if row == 0 else None)
            left += ms
    ax.set_yticks(range(len(result["profile"])), list(result["profile"]))
    ax.set_xlabel("ms per image, inside the worker (wall)")
    ax.set_title(f"{result['model']} on {result['machine']}: where a partition's time goes")
    ax.legend(ncols=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--web", type=int, default=384, help="web-size JPEGs in Parquet")
    parser.add_argument("--photos", type=int, default=400, help="large photos in a folder")
    parser.add_argument("--rss-images", type=int, default=256, help="12 MP photos in the peak-RSS partition")
    args = parser.parse_args()

    from distributed import Client

    from dask_clip import local_cluster
    from dask_clip.runtime.cluster import cpu_count

    kwargs = {"model": args.model, "pretrained": None, "model_inference_batch_size": args.batch_size}
    result: dict[str, Any] = {
        "benchmark": "cpu: end-to-end and whole process against model-only, in worker processes",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cpu_count()} cores",
        "model": args.model,
        "weights": "random (pretrained=None)",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["inputs"] = {
            "web parquet": web_parquet(tmp / "web", args.web, 8),
            "photo folder": photo_folder(tmp / "photos", args.photos),
        }
        inputs = {"web parquet": str(tmp / "web"), "photo folder": str(tmp / "photos")}
        rates: dict[str, list[float]] = {"model-only": []}
        with local_cluster(dashboard_address=None) as cluster, Client(cluster) as client:
            result["cluster"] = {
                "workers": len(client.scheduler_info()["workers"]),
                "torch_threads": sorted(set(client.run(lambda: __import__("torch").get_num_threads()).values())),
            }
            client.submit(model_only_on_worker, kwargs, args.batch_size, 0.1, pure=False).result()  # load
            for _ in range(args.rounds):  # interleaved: every figure sees the same machine
                rates["model-only"].append(
                    client.submit(model_only_on_worker, kwargs, args.batch_size, 8.0, pure=False).result()
                )
                for name, source in inputs.items():
                    for schedule in ("serial", "overlap"):
                        rate = end_to_end(client, source, tmp / "out", kwargs, schedule)
                        rates.setdefault(f"{name}, {schedule}", []).append(rate)
            web_files = sorted(str(p) for p in (tmp / "web").glob("*.parquet"))[:1]
            photo_files = sorted(str(p) for p in (tmp / "photos").glob("*.jpg"))[:96]
            result["profile"] = {
                "web parquet (48 images)": client.submit(
                    profile_on_worker, kwargs, web_files, "parquet", "serial", pure=False
                ).result(),
                "photo folder (96 images)": client.submit(
                    profile_on_worker, kwargs, photo_files, "folder", "serial", pure=False
                ).result(),
            }
        best = {name: max(values) for name, values in rates.items()}
        model_only = best["model-only"]
        result["img_s"] = {name: [round(v, 2) for v in values] for name, values in rates.items()}
        result["best_img_s"] = {name: round(v, 2) for name, v in best.items()}
        result["ratio_to_model_only"] = {
            name: round(v / model_only, 3) for name, v in best.items() if name != "model-only"
        }
        result["startup"] = startup_phases(args.model)
        # Weights in a folder (as users with NeMo's or open_clip's model_dir run it), and by name
        # with --random-weights (the client then imports open_clip to check the name).
        import open_clip

        from dask_clip.testing import write_model_dir

        model_dir = write_model_dir(tmp / "model", model_cfg=open_clip.get_model_config(args.model))
        result["whole_process_dask_clip_embed_folder"] = {}
        for name, weights in (
            ("--model-dir", ["--model-dir", str(model_dir)]),
            ("--model --random-weights", ["--model", args.model, "--random-weights"]),
        ):
            whole = whole_process(tmp / "photos", tmp / "whole", weights, args.batch_size)
            whole["ratio_to_model_only"] = round(whole["img_s"] / model_only, 3)
            result["whole_process_dask_clip_embed_folder"][name] = whole
        with local_cluster(dashboard_address=None) as cluster, Client(cluster) as client:
            result["peak_rss_12mp_partition"] = client.submit(
                peak_rss_on_worker, kwargs, args.rss_images, pure=False
            ).result()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cpu-{args.model}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, path.with_suffix(".png"))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "best_img_s",
                    "ratio_to_model_only",
                    "startup",
                    "whole_process_dask_clip_embed_folder",
                    "peak_rss_12mp_partition",
                )
            },
            indent=2,
            default=str,
        )
    )
    print(f"-> {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # workers import this module by name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from benchmarks import bench_cpu

    bench_cpu.main()
