"""CPU benchmark: end-to-end (Parquet of web-size JPEG bytes -> embeddings on a distributed
LocalCluster) against model-only (random tensors through encode_image), same model, same batch
size, same number of torch threads, in one run.

    python benchmarks/bench_cpu.py [--images 384] [--batch-size 32] [--model ViT-B-32]

Writes benchmarks/results/cpu-<model>-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

RESULTS = Path(__file__).parent / "results"


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct web-size (500x375 to 800x600) JPEGs cut from real photos."""
    from dask_clip.testing import encode_image, photo_crops

    return [encode_image(crop, quality=85) for crop in photo_crops(n, seed=seed)]


def model_only(spec, batch_size: int, n_images: int) -> float:
    """Images/s of encode_image on random input (preprocessed size), after a warm-up batch."""
    from dask_clip.models import get_model

    loaded = get_model(spec)
    x = torch.randn(batch_size, 3, *loaded.preprocess.size)
    with torch.inference_mode():
        loaded.model.encode_image(x)
        started = time.perf_counter()
        done = 0
        while done < n_images:
            loaded.model.encode_image(x)
            done += batch_size
    return done / (time.perf_counter() - started)


def model_only_on_worker(spec, batch_size: int, n_images: int) -> float:
    """model_only() run as a task on a worker, with the worker's torch threads."""
    from dask_clip.models import apply_torch_threads

    apply_torch_threads()
    return model_only(spec, batch_size, n_images)


def stage_costs(blobs: list[bytes], spec) -> dict[str, float]:
    """Milliseconds per image of decode and of preprocess, single thread, in this process."""
    from dask_clip.decode import PILLOW
    from dask_clip.models import get_model
    from dask_clip.preprocess import preprocess_batch

    cfg = get_model(spec).preprocess
    started = time.perf_counter()
    decoded = PILLOW.decode(blobs, max_pixels=None)
    decode_ms = (time.perf_counter() - started) * 1000 / len(blobs)
    tensors = [torch.from_numpy(p.copy()) for p, _ in decoded]
    started = time.perf_counter()
    for i in range(0, len(tensors), 32):
        preprocess_batch(tensors[i : i + 32], cfg, torch.device("cpu"))
    preprocess_ms = (time.perf_counter() - started) * 1000 / len(blobs)
    return {"decode_ms_per_image": decode_ms, "preprocess_ms_per_image": preprocess_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument(
        "--threads-cluster",
        action="store_true",
        help="LocalCluster(processes=False): the worker runs in this process (default: a worker process)",
    )
    parser.add_argument("--verbose", action="store_true", help="log per-partition images/s on the worker")
    args = parser.parse_args()

    import dask.dataframe as dd
    from distributed import Client

    from dask_clip import ImageEmbedder, local_cluster
    from dask_clip.cluster import cpu_count

    cores = cpu_count()
    torch.set_num_threads(cores)
    embedder = ImageEmbedder(
        model=args.model, pretrained=None, model_inference_batch_size=args.batch_size, verbose=args.verbose
    )
    blobs = web_jpegs(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        images = pd.DataFrame({"key": range(len(blobs)), "jpg": pd.Series(blobs, dtype=pd.ArrowDtype(pa.binary()))})
        dd.from_pandas(images, npartitions=args.partitions).to_parquet(f"{tmp}/images")
        mean_bytes = float(np.mean([len(b) for b in blobs]))

        before = model_only(embedder.spec, args.batch_size, args.images)
        costs = stage_costs(blobs[:64], embedder.spec)
        with local_cluster(n_workers=1, processes=not args.threads_cluster) as cluster, Client(cluster) as client:
            ddf = dd.read_parquet(f"{tmp}/images", dtype_backend="pyarrow")
            job = dataclasses.replace(embedder, image_column="jpg")
            job(ddf.partitions[0].head(args.batch_size, compute=False)).compute()  # load the model on the worker
            started = time.perf_counter()
            job(ddf).to_parquet(f"{tmp}/embeddings")
            seconds = time.perf_counter() - started
            worker_threads = client.run(torch.get_num_threads)
            on_worker = client.submit(model_only_on_worker, job.spec, args.batch_size, args.images, pure=False).result()
        after = model_only(embedder.spec, args.batch_size, args.images)
        written = pd.read_parquet(f"{tmp}/embeddings", dtype_backend="pyarrow")
        assert len(written) == args.images
        assert written["embedding_error"].isna().all()

    end_to_end = args.images / seconds
    model_img_s = (before + after) / 2
    result = {
        "benchmark": "cpu end-to-end vs model-only",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "torch": torch.__version__,
        "model": args.model,
        "weights": "random (pretrained=None)",
        "batch_size": args.batch_size,
        "images": args.images,
        "partitions": args.partitions,
        "cluster": "LocalCluster, 1 worker " + ("thread in the driver process" if args.threads_cluster else "process"),
        "mean_jpeg_kb": round(mean_bytes / 1024, 1),
        "torch_threads_driver": cores,
        "torch_threads_workers": sorted(set(worker_threads.values())),
        "model_only_img_s": round(model_img_s, 2),
        "model_only_img_s_before_after": [round(before, 2), round(after, 2)],
        "end_to_end_img_s": round(end_to_end, 2),
        "ratio": round(end_to_end / model_img_s, 3),
        "model_only_on_worker_img_s": round(on_worker, 2),
        "ratio_to_model_only_on_worker": round(end_to_end / on_worker, 3),
        **{k: round(v, 2) for k, v in costs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    kind = "threads" if args.threads_cluster else "processes"
    path = RESULTS / f"cpu-{args.model}-{kind}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"end-to-end / model-only = {result['ratio']:.3f} "
        f"(/ model-only inside the worker: {result['ratio_to_model_only_on_worker']:.3f})  -> {path}"
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
