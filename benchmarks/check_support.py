"""Machinery of the one-run checks (benchmarks/gpu_check.py): time budgets, the JSON report
rewritten after every step, and the cluster the end-to-end steps share."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "Report", "StepTimeout", "time_budget"]


class StepTimeout(Exception):
    """A step ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (between bytecodes)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StepTimeout(f"step ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """The JSON result, rewritten after every step: a kill still leaves what was measured.

    Each step records its status (ok / error / skipped), its seconds, its figures and, where it
    checks something, ``checks``: ``{name: {"pass": bool or None, "value": ..., "goal": ...}}``
    (None: not measured). A figure that was not measured is null, never estimated.
    """

    def __init__(self, path: Path, total_budget: float, budget_scale: float = 1.0) -> None:
        self.path = path
        self.started = time.monotonic()
        self.total_budget = total_budget
        self.budget_scale = budget_scale  # every step's budget times this (a loaded machine's dry run)
        self.data: dict[str, Any] = {"device": None, "steps": {}, "checks": {}}
        self._lock = threading.Lock()

    def left(self) -> float:
        """Seconds left of the total budget."""
        return self.total_budget - (time.monotonic() - self.started)

    def move(self, path: Path) -> None:
        """Write to ``path`` from now on (the GPU's name is known once it was asked)."""
        with self._lock:
            if self.path.exists():
                self.path.replace(path)
            self.path = path

    def write(self) -> None:
        """Rewrite the JSON atomically."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.path)

    def check(self, name: str, passed: bool | None, value: Any = None, goal: str = "") -> None:
        """Record one pass/fail figure (also shown in the summary)."""
        self.data["checks"][name] = {"pass": passed, "value": value, "goal": goal}

    @contextlib.contextmanager
    def step(self, name: str, budget: float, minimum: float = 5.0) -> Iterator[dict[str, Any] | None]:
        """A step with its own time budget; yields its record, or None when no time is left."""
        budget *= self.budget_scale
        record: dict[str, Any] = {"status": "running", "budget_s": round(budget, 1)}
        self.data["steps"][name] = record
        budget = min(budget, self.left())
        started = time.monotonic()
        if budget < minimum:
            record.update(status="skipped", error=f"out of time: {self.left():.0f} s left of the total budget")
            self.write()
            yield None
            return
        self.write()
        checks_before = set(self.data["checks"])
        try:
            with time_budget(budget):
                yield record
            record["status"] = "ok"
        except Exception as err:
            record.update(
                status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:]
            )
            print(f"[gpu_check] {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s", file=sys.stderr, flush=True)
            # the summary as each step finishes: a run killed later still printed what it measured
            figures = {k: v for k, v in record.items() if k not in ("traceback", "output_tail", "status", "seconds")}
            print(f"[gpu_check]   {json.dumps(figures, default=str)[:1500]}", file=sys.stderr, flush=True)
            for check in sorted(set(self.data["checks"]) - checks_before):
                c = self.data["checks"][check]
                print(
                    f"[gpu_check]   check {c['pass']}: {check} = {c['value']} ({c['goal']})",
                    file=sys.stderr,
                    flush=True,
                )
            self.write()


class Cluster:
    """One worker for the whole check, tried in order: dask_clip's own ``local_cluster`` (the
    product's configuration), a bare LocalCUDACluster, a LocalCluster whose worker uses
    ``device="cuda"``. Start it before this process touches CUDA (``local_cluster`` refuses
    otherwise: every worker's model would land on the driver's GPU)."""

    def __init__(self, cpu: bool, threads: int) -> None:
        self.cpu = cpu
        self.threads = threads
        self.cluster: Any = None
        self.client: Any = None
        self.info: dict[str, Any] = {}

    def start(self) -> Any:
        if self.client is not None:
            return self.client
        from distributed import Client, LocalCluster

        from dask_clip import local_cluster

        errors: dict[str, str] = {}
        options = {"n_workers": 1, "threads_per_worker": self.threads, "dashboard_address": "127.0.0.1:0"}
        attempts = [("dask_clip.local_cluster", lambda: local_cluster("cpu" if self.cpu else "cuda", **options))]
        if not self.cpu:
            attempts.append(("dask_cuda.LocalCUDACluster", lambda: __import__("dask_cuda").LocalCUDACluster(**options)))
        attempts.append(("distributed.LocalCluster", lambda: LocalCluster(processes=True, host="127.0.0.1", **options)))
        name = ""
        for name, start in attempts:
            try:
                self.cluster = start()
                break
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"[:400]
        if self.cluster is None:
            raise RuntimeError(f"no cluster could start: {errors}")
        self.info = {"cluster": name, "threads_per_worker": self.threads, **({"errors": errors} if errors else {})}
        self.client = Client(self.cluster)
        return self.client

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            with contextlib.suppress(Exception):
                thing.close()
