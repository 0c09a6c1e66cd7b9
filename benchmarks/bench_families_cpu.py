"""CPU throughput per model family, in worker processes of ``local_cluster()``: end-to-end
(:func:`dask_clip.embed_parquet` on web-size JPEGs in Parquet: read, decode, resize, model,
columns, write) against model-only (random preprocessed input through the model, in the worker),
for ViT-B-16-SigLIP against ViT-B-32, full-size with seeded random weights, each from a folder
written as its published one (:func:`dask_clip.testing.families.write_open_clip_architecture_dir`).

    python benchmarks/bench_families_cpu.py [--rounds 2] [--web 64] [--families siglip clip]

Interleaved rounds, best of each (as benchmarks/bench_cpu.py, whose measuring functions it runs).
Records the machine's load average before and after: on a shared machine the figures are only
comparable within one run. Writes benchmarks/results/cpu-families-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    from distributed import Client

    from benchmarks.bench_cpu import end_to_end, model_only_on_worker, web_parquet
    from dask_clip import local_cluster
    from dask_clip.runtime.cluster import cpu_count
    from dask_clip.testing.families import FULL_SIZE, write_open_clip_architecture_dir

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--web", type=int, default=64, help="web-size JPEGs in Parquet")
    parser.add_argument("--seconds", type=float, default=6.0, help="model-only seconds per round")
    parser.add_argument("--families", nargs="+", default=["siglip", "clip"])
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "cpu per family: end-to-end against model-only, in worker processes",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cpu_count()} cores",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "weights": "random, full-size architectures, from model_dir folders",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["input"] = web_parquet(tmp / "web", args.web, max(1, args.web // 32))
        folders = {name: write_open_clip_architecture_dir(tmp / name, *FULL_SIZE[name]) for name in args.families}
        rates: dict[str, dict[str, list[float]]] = {name: {"model-only": [], "end-to-end": []} for name in folders}
        with local_cluster(dashboard_address=None) as cluster, Client(cluster) as client:
            result["cluster"] = {
                "workers": len(client.scheduler_info()["workers"]),
                "torch_threads": sorted(set(client.run(lambda: __import__("torch").get_num_threads()).values())),
            }
            kwargs = {
                name: {"model_dir": str(folder), "model_inference_batch_size": args.batch_size, "device": "cpu"}
                for name, folder in folders.items()
            }
            print("cluster", result["cluster"], flush=True)
            for name in folders:  # load every model on every worker first
                for _ in range(result["cluster"]["workers"]):
                    end_to_end(client, str(tmp / "web"), tmp / "out", kwargs[name], "overlap")
                print("loaded", name, flush=True)
            for _ in range(args.rounds):  # interleaved: every figure sees the same machine
                for name in folders:
                    rates[name]["model-only"].append(
                        client.submit(
                            model_only_on_worker, kwargs[name], args.batch_size, args.seconds, pure=False
                        ).result()
                    )
                    rates[name]["end-to-end"].append(
                        end_to_end(client, str(tmp / "web"), tmp / "out", kwargs[name], "overlap")
                    )
                    print(name, {k: v[-1] for k, v in rates[name].items()}, flush=True)
    for name, measured in rates.items():
        best = {k: max(v) for k, v in measured.items()}
        result["families"][name] = {
            "model": FULL_SIZE[name][0],
            "img_s": {k: [round(x, 2) for x in v] for k, v in measured.items()},
            "best_img_s": {k: round(v, 2) for k, v in best.items()},
            "end_to_end_over_model_only": round(best["end-to-end"] / best["model-only"], 3),
        }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cpu-families-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # workers import benchmarks.bench_cpu by name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    main()
