"""Search by image and by text on the bundled sample's real images, against open_clip itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HOSTILE_CAPTION

from dask_clip.index import load, results_html, results_records
from dask_clip.testing import encode_image, parity, reference_embeddings


@pytest.fixture(scope="module")
def index(sample_index):
    return load(sample_index)


def test_index_learns_model_and_counts_from_the_embeddings_folder(index, text_model_dir, sample_frame):
    assert index.model.model_dir == text_model_dir
    counts = index.manifest["counts"]
    # 3 broken rows (truncated JPEG, not an image, null) have no embedding
    assert counts == {"rows": 319, "vectors": 316, "null_embeddings": 3, "invalid_embeddings": 0}
    assert index.index_key == "Flat" and index.image_column == "jpg"
    broken = set(sample_frame.index) - set(index.table.column("source_row").to_pylist())
    assert len(broken) == 3


def test_search_image_bytes_path_and_url_find_the_row(index, sample_frame, text_model_dir, tmp_path):
    row = 57
    data = sample_frame["jpg"].iloc[row]
    path = tmp_path / "query.jpg"
    path.write_bytes(data)
    for query in (data, str(path), path.as_uri()):
        got = index.search_image(query, k=3)
        assert got["source_row"].iloc[0] == row
        assert got["key"].iloc[0] == sample_frame["key"].iloc[row]
        assert got["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    # the query is embedded exactly like the row was, and like open_clip's own pipeline
    stored = index.embeddings(index.ids_for_keys(sample_frame["key"].iloc[[row, row + 1]]))
    queries = index.embed_images([data, sample_frame["jpg"].iloc[row + 1]])
    np.testing.assert_allclose(queries, stored, atol=1e-5)
    reference = reference_embeddings(text_model_dir, [data, sample_frame["jpg"].iloc[row + 1]])
    assert parity(queries, reference).max() <= 0.005


def test_search_image_batch_and_bad_images(index, sample_frame, photos):
    got = index.search_image([sample_frame["jpg"].iloc[5], sample_frame["jpg"].iloc[9]], k=2)
    assert got.groupby("query")["source_row"].first().tolist() == [5, 9]
    with pytest.raises(ValueError, match="not a decodable image"):
        index.search_image(b"this is not an image")
    with pytest.raises(ValueError, match="file not found"):
        index.search_image("/nonexistent/query.jpg")
    # a photo that is not in the index still gets its neighbours, most similar first
    other = index.search_image(encode_image(photos[3]), k=5)
    assert other["similarity"].is_monotonic_decreasing


def test_search_text_equals_open_clip_text_tower(index, text_model_dir):
    import open_clip

    texts = ["a photo of a cat", "an astronaut", "a rocket on the launch pad"]
    got = index.search_text(texts, k=5)
    model = open_clip.create_model(f"local-dir:{text_model_dir}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{text_model_dir}")(texts)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    expected = index.search(reference, k=5)
    pd.testing.assert_frame_equal(got.drop(columns="similarity"), expected.drop(columns="similarity"))
    np.testing.assert_allclose(got["similarity"], expected["similarity"], atol=1e-5)
    # and any encoder can be plugged in
    calls = []

    def encoder(batch):
        calls.append(list(batch))
        return reference[:1]

    one = index.search_text("anything", k=5, encode_text=encoder)
    assert calls == [["anything"]]
    pd.testing.assert_frame_equal(one, expected[expected["query"] == 0])


def test_search_by_embedding_and_ids(index):
    ids = index.ids[[3, 100]]
    vectors = index.embeddings(ids)
    assert vectors.shape == (2, index.dim)
    pd.testing.assert_frame_equal(index.search_ids(ids, k=4), index.search(vectors, k=4))
    assert index.search_ids(ids, k=4).groupby("query")["id"].first().tolist() == ids.tolist()
    # k larger than the index: every row once
    assert len(index.search(vectors[:1], k=1000)) == len(index)


def test_results_html_escapes_captions_and_inlines_thumbnails(index, sample_frame):
    got = index.search_like(sample_frame["key"].iloc[0], k=4)
    assert got["caption"].iloc[0] == HOSTILE_CAPTION
    page = results_html(got, index, queries=["<script>alert(1)</script>"])
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('src="data:image/jpeg;base64,') == 4
    records = results_records(got)
    assert len(records) == 4 and "jpg" not in records[0] and records[0]["caption"] == HOSTILE_CAPTION
    import json

    json.dumps(records)  # plain JSON values


def test_results_and_rows_carry_the_image_bytes_kept_on_disk(index, sample_frame):
    """The image column stays on disk after load, yet results and rows hold their own images."""
    assert index.image_column == "jpg" and "jpg" not in index.frame.columns
    by_key = dict(zip(sample_frame["key"], sample_frame["jpg"]))
    keys = sample_frame["key"].iloc[[3, 150, 300]].tolist()
    found = index.search_like(keys, k=4)
    assert len(found) == 12 and found["jpg"].tolist() == [by_key[k] for k in found["key"]]
    rows = index.rows(index.ids_for_keys(keys))
    assert rows["key"].tolist() == keys and rows["jpg"].tolist() == [by_key[k] for k in keys]
