"""Model build + weight load time in one process, before (open_clip's create_model) and after
(dask_clip's meta-device build with assigned weights), for open_clip folders of random weights.

    python benchmarks/bench_startup.py [--models ViT-B-32 ViT-L-14] [--rounds 3]

Each model's seeded random weights are written once to a temporary ``local-dir:`` folder
(:func:`dask_clip.testing.write_model_dir`); then, interleaved and best of ``--rounds``:

- ``open_clip``: ``open_clip.create_model("local-dir:FOLDER")``, what dask_clip ran before
  (random initialisation, then the checkpoint copied over it);
- ``dask_clip``: the project's path (``dask_clip.models._create`` for ``ModelSpec(model_dir=...)``);
- ``dask_clip_get_model``: ``dask_clip.models.get_model`` as a worker runs it (also moves the
  model to the device; eval mode), cache cleared;
- ``transformers-NAME``: ``get_model`` on a transformers ``CLIPModel`` folder of that size
  (``from_pretrained`` already builds on ``meta`` in transformers 5: nothing to compare against).

The file read is included in every figure (the page cache is warm after the first round). The
machine's load average is recorded beside the figures: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from dask_clip import models
from dask_clip.models.spec import ModelSpec
from dask_clip.testing import write_model_dir, write_transformers_model_dir


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    parser.add_argument("--transformers", nargs="*", default=["ViT-L-14"], help="transformers folders too")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = write_model_dir(Path(tmp) / name, model_cfg=open_clip.get_model_config(name))
            spec = ModelSpec(model=name, pretrained=None, model_dir=str(folder), device="cpu", precision="fp32")
            times: dict[str, list[float]] = {"open_clip": [], "dask_clip": [], "dask_clip_get_model": []}
            for _ in range(args.rounds):
                times["open_clip"].append(_seconds(open_clip.create_model, f"local-dir:{folder}"))
                times["dask_clip"].append(_seconds(models._create, spec))
                models.clear_cache()
                times["dask_clip_get_model"].append(_seconds(models.get_model, spec))
                models.clear_cache()
            best = {k: round(min(v), 3) for k, v in times.items()}
            results[name] = {
                "weights_mb": round(sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6, 1),
                "best_s": best,
                "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "speedup": round(best["open_clip"] / best["dask_clip"], 1),
            }
            print(name, results[name]["best_s"], f"x{results[name]['speedup']}")
        for name in args.transformers:  # transformers' from_pretrained already builds on meta
            folder = write_transformers_model_dir(Path(tmp) / f"hf-{name}", config=name)
            spec = ModelSpec(model_dir=str(folder), device="cpu", precision="fp32")
            hf_times: list[float] = []
            for _ in range(args.rounds):
                hf_times.append(_seconds(models.get_model, spec))
                models.clear_cache()
            results[f"transformers-{name}"] = {"best_s": {"dask_clip_get_model": round(min(hf_times), 3)}}
            print(f"transformers {name}", results[f"transformers-{name}"])
    record = {
        "what": "model build + weight load, one process, best of rounds (seconds)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"open_clip {open_clip.__version__}",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "models": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
