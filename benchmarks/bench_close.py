"""How long a local cluster takes to close once the job is done, graceful against at once.

    python benchmarks/bench_close.py [--rounds 3] [--model ViT-B-32]

Each round starts a fresh process that opens :func:`dask_clip.local_cluster` (the CLI's
cluster: one CPU worker per 8 cores), loads the model on every worker (torch and open_clip
imported, seeded random weights), then closes the client and the cluster, timed:

- ``graceful``: ``client.close(); cluster.close()``, what the CLI did before: each nanny asks
  its worker to close and waits for the process to exit (4 s at most, then SIGKILL);
- ``at_once``: ``client.close(); stop_workers_now(cluster); cluster.close()``, what
  ``connect``/``connect_early`` (every CLI command) now do when the block succeeds.

Rounds alternate the two modes; the load average is recorded beside the figures (the machine
may be shared). Writes ``benchmarks/results/close.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

ROUND = """
import sys, time
from distributed import Client
from dask_clip import local_cluster
from dask_clip.runtime.cluster import stop_workers_now
from dask_clip.models import get_model
from dask_clip.models.spec import ModelSpec

if __name__ == "__main__":
    mode, model = sys.argv[1], sys.argv[2]
    cluster = local_cluster(dashboard_address=None)
    client = Client(cluster)
    client.run(lambda: get_model(ModelSpec(model, None)) and 0)
    started = time.perf_counter()
    client.close()
    if mode == "at_once":
        stop_workers_now(cluster)
    cluster.close()
    print(time.perf_counter() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    seconds: dict[str, list[float]] = {"graceful": [], "at_once": []}
    loads = []
    for _ in range(args.rounds):
        for mode, values in seconds.items():
            out = subprocess.run(
                [sys.executable, "-c", ROUND, mode, args.model], capture_output=True, text=True, check=True, env=env
            )
            values.append(round(float(out.stdout.split()[-1]), 2))
            loads.append(round(os.getloadavg()[0], 2))
    result = {
        "what": "seconds from client.close() to cluster.close() returning, workers holding a loaded model",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "seconds": seconds,
        "median_s": {mode: sorted(v)[len(v) // 2] for mode, v in seconds.items()},
        "load_average_1min_after_each_round": loads,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "close.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
