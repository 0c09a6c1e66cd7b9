"""A pytest plugin that records each test's wall time and CPU time, the test process's and all
its children's (session cluster workers, fork servers, CLI subprocesses), as JSON: where the
test suite's time goes, for CONTRIBUTING's "Where the time goes".

    PYTHONPATH=benchmarks PYTEST_CPU_OUT=benchmarks/results/test-cpu.json \\
        .venv/bin/python -m pytest tests -q -p pytest_cpu [--runslow -m slow]

Children that ended before a test finished count only if their parent waited for them
(``children_user``); the JSON holds collection, the whole session and one row per test
(``[nodeid, wall_s, cpu_s]``). One process only: under pytest-xdist each worker would
overwrite the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

_me = psutil.Process()
_rows: list[tuple[str, float, float]] = []
_session: dict[str, float] = {}


def _cpu_seconds() -> float:
    """CPU seconds of this process, its waited-for children, and its live descendants."""
    times = _me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in _me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        total += child_times.user + child_times.system
    return total


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = yield
    _rows.append((item.nodeid, time.perf_counter() - wall, _cpu_seconds() - cpu))
    return result


def pytest_sessionstart(session: pytest.Session) -> None:
    _session.update(wall=time.perf_counter(), cpu=_cpu_seconds())


def pytest_collection_finish(session: pytest.Session) -> None:
    _session.update(collect_wall=time.perf_counter() - _session["wall"], collect_cpu=_cpu_seconds() - _session["cpu"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("PYTEST_CPU_OUT", "test-cpu.json")
    record = {
        "collection": {"wall_s": _session.get("collect_wall"), "cpu_s": _session.get("collect_cpu")},
        "session": {"wall_s": time.perf_counter() - _session["wall"], "cpu_s": _cpu_seconds() - _session["cpu"]},
        "load_after": os.getloadavg()[0],
        "tests": _rows,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=0)
