"""What the scores cost: images only against images + heads against images + text + CLIP score +
heads, on CPU, ViT-B-32 (random weights), batch 32, one local_cluster() worker process.

    python benchmarks/bench_heads.py [--images 256] [--rounds 3] [--labels 20]

The heads are the shipped ones with seeded random weights in the published layouts, at
ViT-B-32's width (512): LAION's aesthetic predictor, LAION's NSFW detector, and zero-shot labels
(``--labels`` names, 3 templates each, label + probability + all probabilities). Captions are
10-30 words. The three configurations run interleaved (a different order each round), after
one warm-up each (model, heads and zero-shot classifier loaded); the best of ``--rounds`` is
kept. Writes benchmarks/results/heads-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results"
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "astronaut",
    "coffee",
    "cup",
    "cat",
    "rocket",
    "galaxy",
    "sky",
    "street",
    "dog",
    "tree",
    "house",
    "car",
    "beach",
    "mountain",
    "portrait",
    "close-up",
    "of",
    "with",
    "on",
    "in",
    "at",
    "night",
    "red",
    "blue",
    "green",
    "old",
    "new",
    "small",
    "large",
]


def build_input(folder: Path, n: int, partitions: int) -> Path:
    from dask_clip.testing import encode_image, photo_crops

    rng = np.random.default_rng(0)
    blobs = [encode_image(c, quality=85) for c in photo_crops(n, seed=1)]
    captions = [" ".join(rng.choice(WORDS, int(rng.integers(10, 31)))) for _ in range(n)]
    table = pa.table({"jpg": pa.array(blobs, pa.binary()), "caption": pa.array(captions, pa.string())})
    path = folder / "images.parquet"
    pq.write_table(table, path, row_group_size=-(-n // partitions))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import dask.dataframe as dd
    import open_clip
    import torch
    from distributed import Client

    import dask_clip
    from dask_clip import ImageEmbedder, local_cluster
    from dask_clip.heads import AestheticHead, NSFWHead, zero_shot_heads
    from dask_clip.testing import write_aesthetic_weights, write_model_dir, write_nsfw_weights

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(write_model_dir(root / "b32", model_cfg=open_clip.get_model_config("ViT-B-32")))
        labels = [f"label {i}: {WORDS[i % len(WORDS)]}" for i in range(args.labels)]
        heads = [
            AestheticHead(str(write_aesthetic_weights(root / "aesthetic.pth", dim=512))),
            NSFWHead(str(write_nsfw_weights(root / "nsfw.pth", dim=512))),
            *zero_shot_heads(
                labels,
                ("a photo of a {}.", "a picture of {}", "{}, close up"),
                probabilities_column="zero_shot_probabilities",
            ),
        ]
        base = dict(model_dir=model_dir, image_column="jpg", model_inference_batch_size=args.batch_size)
        configs = {
            "images": ImageEmbedder(**base),
            "images + heads": ImageEmbedder(**base, heads=heads),
            "images + text + clip score + heads": ImageEmbedder(**base, heads=heads, text_column="caption"),
        }
        path = build_input(root, args.images, args.partitions)
        ddf = dd.read_parquet(path, dtype_backend="pyarrow", split_row_groups=True)
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        with local_cluster(n_workers=1) as cluster, Client(cluster) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            threads = client.run(lambda: torch.get_num_threads())

            def run(embedder: ImageEmbedder) -> float:
                started = time.perf_counter()
                rows = int(embedder(ddf).map_partitions(len).compute().sum())
                assert rows == args.images
                return time.perf_counter() - started

            for embedder in configs.values():  # warm-up: model, heads, zero-shot classifier
                run(embedder)
            names = list(configs)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    seconds[name].append(run(configs[name]))
                    print(f"round {r}: {name}: {seconds[name][-1]:.2f}s", flush=True)
    best = {name: min(values) for name, values in seconds.items()}
    images_only = best["images"]
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "versions": {
            "dask_clip": dask_clip.__version__,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
        "settings": {**vars(args), "model": "ViT-B-32 (random weights)", "workers": len(workers)},
        "worker_torch_threads": list(threads.values()),
        "seconds": seconds,
        "best_seconds": best,
        "images_per_second": {name: args.images / s for name, s in best.items()},
        "heads_cost": best["images + heads"] / images_only - 1,
        "text_and_clip_score_cost": (best["images + text + clip score + heads"] - best["images + heads"]) / images_only,
        "everything_cost": best["images + text + clip score + heads"] / images_only - 1,
        "note": "shared 2-core machine: ratios inside one run; absolute figures are noisy",
    }
    print(json.dumps({k: result[k] for k in ("images_per_second", "heads_cost", "text_and_clip_score_cost")}, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"heads-cpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
