"""WebDataset tar input against Parquet input, same images, in one run.

1. Read throughput: ``read_webdataset`` over tar shards (img2dataset's layout: KEY.jpg, KEY.txt,
   KEY.json per sample) against ``dd.read_parquet`` of the same rows (key, image bytes, caption,
   url) in as many Parquet files, local disk (page cache warm), Dask's synchronous scheduler: one
   core, reading only. MB/s counts the image bytes delivered.
2. End to end: ``ImageEmbedder`` (ViT-B-32, random weights) on a ``local_cluster()`` worker
   process, tar input against Parquet input, written with ``write_parquet`` as the CLI does.

Reading: runs interleaved (tar, Parquet, tar, ...), the best of each kept. End to end: rounds of
one tar run and one Parquet run back to back (the order alternating from round to round), the
ratio taken within each round and the median reported with its range, so that load from other
processes on a shared machine hits both sides of a ratio alike.

    python benchmarks/bench_webdataset.py [--images 256] [--shards 8] [--rounds 5]

The JSON also bounds what tar reading can cost end to end from the read figures alone
(``tar_read_cost_end_to_end``): on a shared machine they are far steadier than the end-to-end
rounds.

Writes benchmarks/results/webdataset-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

RESULTS = Path(__file__).parent / "results"


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct web-size (500x375 to 800x600) JPEGs cut from real photos."""
    from dask_clip.testing import encode_image, photo_crops

    return [encode_image(crop, quality=85) for crop in photo_crops(n, seed=seed)]


def write_inputs(folder: Path, blobs: list[bytes], shards: int) -> tuple[str, str]:
    """The same samples as tar shards (img2dataset's member layout) and as Parquet files."""
    (folder / "tars").mkdir()
    (folder / "parquet").mkdir()
    per_shard = -(-len(blobs) // shards)
    for shard in range(shards):
        keys = [f"{i:09d}" for i in range(shard * per_shard, min(len(blobs), (shard + 1) * per_shard))]
        rows = {"key": keys, "image": [], "caption": [], "url": []}
        with tarfile.open(folder / "tars" / f"{shard:05d}.tar", "w") as tar:
            for key in keys:
                caption, url = f"a photo, number {key}", f"https://img.example/{key}.jpg"
                image = blobs[int(key)]
                for name, data in (
                    (f"{key}.jpg", image),
                    (f"{key}.json", json.dumps({"url": url, "key": key, "status": "success"}).encode()),
                    (f"{key}.txt", caption.encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                for column, value in (("image", image), ("caption", caption), ("url", url)):
                    rows[column].append(value)
        table = pa.table(
            {
                "key": pa.array(rows["key"], pa.string()),
                "image": pa.array(rows["image"], pa.binary()),
                "caption": pa.array(rows["caption"], pa.string()),
                "url": pa.array(rows["url"], pa.string()),
            }
        )
        import pyarrow.parquet as pq

        pq.write_table(table, folder / "parquet" / f"part.{shard:05d}.parquet")
    return str(folder / "tars" / "*.tar"), str(folder / "parquet")


def read_tar(pattern: str) -> pd.DataFrame:
    from dask_clip import read_webdataset

    return read_webdataset(pattern).compute(scheduler="sync")


def read_parquet(folder: str) -> pd.DataFrame:
    import dask.dataframe as dd

    return dd.read_parquet(folder, dtype_backend="pyarrow").compute(scheduler="sync")


def timed_rounds(runs: dict[str, object], rounds: int, alternate: bool = False) -> dict[str, list[float]]:
    """Seconds of each function in each round; every round calls each function once, in turn
    (in reverse order every other round with ``alternate``)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs.items())
        if alternate and r % 2:
            order.reverse()
        for name, run in order:
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def read_share(result: dict) -> dict:
    """What the extra reading of tar input can cost end to end, from the read figures (which a
    busy machine disturbs far less than the end-to-end ones): the extra seconds per image of
    reading tar instead of Parquet, as a share of the end-to-end seconds per image, if reading
    did not overlap the model at all."""
    n = result["images"]
    extra_s = (result["read"]["tar_s"] - result["read"]["parquet_s"]) / n
    best_parquet = result["end_to_end"]["parquet_img_s_best"]
    return {
        "how": "(tar read s - Parquet read s) per image / end-to-end s per image; an upper bound, "
        "as if the read were serial with the model",
        "extra_read_us_per_image": round(extra_s * 1e6, 1),
        "share_at_best_parquet_rate_here": round(extra_s * best_parquet, 5),
        "share_at_16_img_s": round(extra_s * 16, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="end-to-end rounds (one run of each input per round)")
    parser.add_argument("--read-rounds", type=int, default=15, help="read-only runs of each input (best kept)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    import dask.dataframe as dd
    import torch
    from distributed import Client

    from dask_clip import ImageEmbedder, local_cluster, read_webdataset
    from dask_clip.columns import embeddings_to_numpy
    from dask_clip.io.writer import write_parquet
    from dask_clip.runtime.cluster import cpu_count

    blobs = web_jpegs(args.images)
    image_bytes = sum(len(b) for b in blobs)
    with tempfile.TemporaryDirectory() as tmp:
        tars, parquet = write_inputs(Path(tmp), blobs, args.shards)
        tar_bytes = sum(p.stat().st_size for p in (Path(tmp) / "tars").iterdir())
        parquet_bytes = sum(p.stat().st_size for p in (Path(tmp) / "parquet").iterdir())

        # -- 1. reading only --------------------------------------------------------------------
        from_tar, from_parquet = read_tar(tars), read_parquet(parquet)  # warm the page cache
        assert from_tar["key"].tolist() == from_parquet["key"].tolist()
        assert from_tar["image"].tolist() == from_parquet["image"].tolist() == blobs
        assert from_tar["read_error"].isna().all()
        read_times = timed_rounds(
            {"tar": lambda: read_tar(tars), "parquet": lambda: read_parquet(parquet)}, args.read_rounds
        )
        read = {name: min(times) for name, times in read_times.items()}

        # -- 2. end to end ----------------------------------------------------------------------
        embedder = ImageEmbedder(
            model=args.model, pretrained=None, model_inference_batch_size=args.batch_size, image_column="image"
        )
        with local_cluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            warm = read_webdataset(tars).partitions[0]
            embedder(warm).compute()  # load the model on the worker
            counter = iter(range(10**6))

            def embed(ddf: dd.DataFrame) -> None:
                out = Path(tmp) / f"out-{next(counter)}"
                summary = write_parquet(embedder(ddf), out, client=client)
                assert summary.rows == args.images

            end_to_end = timed_rounds(
                {
                    "tar": lambda: embed(read_webdataset(tars)),
                    "parquet": lambda: embed(dd.read_parquet(parquet, dtype_backend="pyarrow")),
                },
                args.rounds,
                alternate=True,
            )
            worker_threads = sorted(set(client.run(torch.get_num_threads).values()))
        a = pd.read_parquet(Path(tmp) / "out-0", dtype_backend="pyarrow")
        b = pd.read_parquet(Path(tmp) / "out-1", dtype_backend="pyarrow")
        assert a["key"].tolist() == b["key"].tolist()
        np.testing.assert_allclose(embeddings_to_numpy(a["embedding"]), embeddings_to_numpy(b["embedding"]), atol=1e-6)

    n = args.images
    ratios = [p / t for t, p in zip(end_to_end["tar"], end_to_end["parquet"])]
    result = {
        "benchmark": "webdataset tar input vs Parquet input",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {cpu_count()} cores (shared: other jobs ran)",
        "torch": torch.__version__,
        "images": n,
        "shards": args.shards,
        "mean_jpeg_kb": round(image_bytes / n / 1024, 1),
        "tar_bytes": tar_bytes,
        "parquet_bytes": parquet_bytes,
        "read": {
            "how": "Dask sync scheduler (one core), local disk, page cache warm, "
            f"best of {args.read_rounds} interleaved runs; MB/s of image bytes delivered",
            "tar_s": round(read["tar"], 4),
            "parquet_s": round(read["parquet"], 4),
            "tar_mb_s": round(image_bytes / read["tar"] / 1e6, 1),
            "parquet_mb_s": round(image_bytes / read["parquet"] / 1e6, 1),
            "tar_img_s": round(n / read["tar"], 1),
            "parquet_img_s": round(n / read["parquet"], 1),
            "tar_over_parquet_time": round(read["tar"] / read["parquet"], 3),
        },
        "end_to_end": {
            "how": f"ImageEmbedder({args.model}, pretrained=None, batch {args.batch_size}) on local_cluster(n_workers=1), "
            f"write_parquet; {args.rounds} rounds of one tar and one Parquet run back to back, order alternating; "
            "ratio = tar img/s / Parquet img/s within a round",
            "torch_threads_workers": worker_threads,
            "tar_img_s_per_round": [round(n / t, 2) for t in end_to_end["tar"]],
            "parquet_img_s_per_round": [round(n / t, 2) for t in end_to_end["parquet"]],
            "ratio_per_round": [round(p / t, 3) for t, p in zip(end_to_end["tar"], end_to_end["parquet"])],
            "ratio_median": round(float(np.median(ratios)), 3),
            "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
            "tar_img_s_best": round(n / min(end_to_end["tar"]), 2),
            "parquet_img_s_best": round(n / min(end_to_end["parquet"]), 2),
            "goal": "tar within 5% of Parquet (ratio >= 0.95)",
        },
    }
    result["tar_read_cost_end_to_end"] = read_share(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"webdataset-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"read: tar {result['read']['tar_mb_s']} MB/s vs Parquet {result['read']['parquet_mb_s']} MB/s; "
        f"end to end: tar/Parquet img/s = {result['end_to_end']['ratio_median']} (median of rounds)  -> {path}"
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
