"""`dask-clip index` and `dask-clip search` as users run them: the CLI in this process (the index
built on the session cluster), real folders."""

from __future__ import annotations

import json
from html import escape

from cli_support import run_main as run

from dask_clip.index import load


def test_index_then_search_by_key_text_and_image(tmp_path, sample_embeddings, sample_frame, client):
    index_dir = tmp_path / "index"
    built = run("index", sample_embeddings, str(index_dir), "--image-column", "jpg", client=client)
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
