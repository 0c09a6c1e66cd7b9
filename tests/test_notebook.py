"""notebooks/curation.ipynb runs top to bottom offline on the bundled sample, and draws pictures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import nbformat

pytestmark = pytest.mark.slow  # subprocesses and clusters of their own: `pytest -m 'not slow'` skips them

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "curation.ipynb"


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


@pytest.mark.slow
def test_curation_notebook_runs_offline(tmp_path):
    import nbformat  # here: 0.6 s of every collection otherwise
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(
        nb,
        timeout=300,  # per cell; a ceiling against hangs, not a speed test (time: benchmarks/)
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    source = {i: c.source for i, c in enumerate(code)}
    neighbours = next(c for c in code if "Nearest" in c.source or "similarity = V @ V[query]" in c.source)
    dedup = next(c for c in code if "semantic_dedup(" in c.source)
    assert _images(neighbours) == 1, source
    assert _images(dedup) == 1
    assert "planted copies caught:" in _text(dedup)
    assert (tmp_path / "curation-output" / "embeddings" / "part-00000.parquet").exists()
    scores = next(c for c in code if "filter_parquet(" in c.source)
    assert _images(scores) == 1
    assert "kept" in _text(scores) and "removed" in _text(scores)
    assert (tmp_path / "curation-output" / "filtered" / "_filter_summary.json").exists()
    search = next(c for c in code if "search_text(" in c.source)
    assert _images(search) == 1
    assert "rank  similarity" in _text(search)
