"""The browse app over HTTP, served by uvicorn in its own process (as ``dask-clip serve`` will)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import HOSTILE_CAPTION, Server

from dask_clip.index import load

MAX_UPLOAD = 300_000


@pytest.fixture(scope="module")
def server(sample_index):
    running = Server(sample_index, max_upload_bytes=MAX_UPLOAD)
    yield running
    running.stop()


def get(server: Server, path: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(server: Server, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_page_and_info(server):
    status, headers, body = get(server, "/")
    assert status == 200 and b'id="query"' in body and b'id="upload"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"].split("style-src")[0]
    status, _, body = get(server, "/api/info")
    info = json.loads(body)
    assert status == 200
    assert info == {**info, "vectors": 316, "images": True, "text": True, "upload": True, "caption_column": "caption"}


def test_text_search_matches_the_library(server, sample_index):
    status, _, body = get(server, "/api/search?q=a%20photo%20of%20a%20cat&k=7")
    assert status == 200
    results = json.loads(body)["results"]
    expected = load(sample_index).search_text("a photo of a cat", k=7)
    assert [r["id"] for r in results] == [str(i) for i in expected["id"]]
    np.testing.assert_allclose([r["similarity"] for r in results], expected["similarity"], atol=1e-5)
    assert set(results[0]["scores"]) == {"aesthetic"}  # numeric metadata, not ids or sizes
    assert get(server, "/api/search?q=%20")[0] == 400
    assert get(server, "/api/search?q=cat&k=100000")[0] == 400
    assert get(server, "/api/search?q=cat&k=x")[0] == 400


def test_more_like_this_and_thumbnails(server, sample_frame):
    from PIL import Image

    status, _, body = get(server, "/api/search?q=astronaut&k=3")
    first = json.loads(body)["results"][0]
    status, _, body = get(server, f"/api/like?id={first['id']}&k=5")
    results = json.loads(body)["results"]
    assert status == 200 and results[0]["id"] == first["id"] and results[0]["similarity"] == pytest.approx(1, abs=1e-5)

    status, headers, body = get(server, f"/thumb/{first['id']}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(body))
    assert max(thumb.size) <= 256
    # only ids of the index name images: no file path ever reaches the server
    assert get(server, f"/thumb/{2**50}")[0] == 404
    assert get(server, "/thumb/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert get(server, f"/api/like?id={2**50}")[0] == 404
    # the hostile caption comes back as data, for the page to show as text
    hostile = load(server.index_dir).ids_for_keys(sample_frame["key"].iloc[0])[0]
    _, _, body = get(server, f"/api/like?id={hostile}&k=1")
    assert json.loads(body)["results"][0]["caption"] == HOSTILE_CAPTION


def test_upload_finds_the_image_and_refuses_bad_ones(server, sample_frame):
    from PIL import Image

    status, body = post(server, "/api/image?k=3", sample_frame["jpg"].iloc[12])
    assert status == 200 and body["results"][0]["key"] == sample_frame["key"].iloc[12]

    status, body = post(server, "/api/image", b"\0" * (MAX_UPLOAD + 1))
    assert status == 413 and "larger" in body["error"]
    status, body = post(server, "/api/image", b"GIF89a not really")
    assert status == 400 and "not a usable image" in body["error"]
    # a decompression bomb: 12,000 x 12,000 pixels in a few kB of PNG
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < MAX_UPLOAD
    status, body = post(server, "/api/image", bomb.getvalue())
    assert status == 400 and "too large" in body["error"]
