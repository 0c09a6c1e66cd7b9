"""`dask-clip index` and `dask-clip search` as users run them: real subprocesses, real folders."""

from __future__ import annotations

import json
import subprocess
import sys
from html import escape

import pytest

from dask_clip.index import load

pytestmark = pytest.mark.slow  # CLI subprocesses with clusters of their own


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dask_clip.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_index_then_search_by_key_text_and_image(tmp_path, sample_embeddings, sample_frame):
    index_dir = tmp_path / "index"
    built = run("index", sample_embeddings, str(index_dir), "--image-column", "jpg", "--n-workers", "1")
    assert f"-> {index_dir}" in built.stdout
    index = load(index_dir)
    key = sample_frame["key"].iloc[5]
    like = json.loads(run("search", str(index_dir), "--like", key, "-k", "3", "--json").stdout)
    assert like[0]["key"] == key and like[0]["rank"] == 1 and abs(like[0]["similarity"] - 1) < 1e-5
    expected = index.search_like([key], 3)
    assert [r["key"] for r in like] == expected["key"].tolist()
    text = json.loads(run("search", str(index_dir), "--text", "a photo of a cat", "-k", "4", "--json").stdout)
    assert [r["key"] for r in text] == index.search_text(["a photo of a cat"], 4)["key"].tolist()
    image = tmp_path / "query.jpg"
    image.write_bytes(sample_frame["jpg"].iloc[7])
    page = tmp_path / "hits.html"
    run("search", str(index_dir), "--image", str(image), "-k", "5", "--html", str(page))
    html = page.read_text()
    assert escape(sample_frame["caption"].iloc[7]) in html and "#1 · similarity 1.000" in html  # the image's own row
    assert "<script>window" not in html  # captions are escaped
