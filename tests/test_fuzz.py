"""The fuzz harness (benchmarks/fuzz.py), CI-sized: mutated images of six formats through the
real embedder in child processes. No crash, hang or row without an outcome is allowed, except
the two the run plants to prove that the harness sees them and pins them to their case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent.parent / "benchmarks" / "fuzz.py"

pytestmark = pytest.mark.slow  # child processes: ~10 s on a quiet 2-core machine


def test_fuzz_run_finds_no_crash_hang_or_lost_row_and_sees_planted_ones(tmp_path):
    out = tmp_path / "fuzz.json"
    failures = tmp_path / "failures"
    args = ["--cases", "100", "--inject-faults", "--timeout", "8", "--out", str(out), "--save-failures", str(failures)]
    proc = subprocess.run([sys.executable, str(FUZZ), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["ran"] == got["cases"] == 100
    # exactly the planted faults, pinned to their cases; nothing else
    assert [(f["kind"], f["index"]) for f in got["failures"]] == [("crash", 1), ("hang", 2)]
    assert (got["crashes"], got["hangs"], got["memory_limit_hits"]) == (1, 1, 0)
    assert got["rows_with_neither"] == got["rows_with_both"] == got["misaligned_calls"] == 0
    assert got["embedded"] + got["row_errors"] == 98
    assert got["embedded"] > 0 and got["row_errors"] > 0  # the mutations reach both outcomes
    assert set(got["by_format"]) == {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
    assert sorted(p.name for p in failures.iterdir()) == ["crash-1.jpg", "hang-2.jpg"]
    assert got["max_rss_mib"] > 0 and got["children"] == 3


def test_cases_are_reproducible_from_seed_and_index():
    sys.path.insert(0, str(FUZZ.parent))
    try:
        import fuzz
    finally:
        sys.path.remove(str(FUZZ.parent))
    seeds = fuzz.make_seeds(0)
    assert {fmt for _, fmt, _ in seeds} == set(fuzz.FORMATS)
    a = [fuzz.generate_case(i, seeds, 7) for i in range(50)]
    b = [fuzz.generate_case(i, seeds, 7) for i in range(50)]
    assert [c.data for c in a] == [c.data for c in b]
    assert len({c.data for c in a}) == 50  # every case differs
    assert fuzz.call_schedule(10, 4, 3) == [(0, 1), (1, 1), (2, 1), (3, 4), (7, 3)]
