"""The browse server under hostile requests (issue 21, item 3), in process (Starlette's
TestClient over the real app): foreign Host names (DNS rebinding), uploads a cross-origin page
could send, ids beyond int64, thumbnails that would name local files, and the decode budget.

Before the fix: every Host was answered, a text/plain upload from any Origin was decoded and
searched, ``/thumb/99999999999999999999`` and ``/api/like?id=2**64`` answered 500, a missing
path's thumbnail error quoted the path, and thumbnails decoded without the embedder's budget."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from dask_clip.index import build, load
from dask_clip.index.report import thumbnail
from dask_clip.index.server import create_app
from dask_clip.testing import embedding_array, encode_image, photo_crops, solid_png

LOCAL = "http://127.0.0.1:8000"
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def app(sample_index):
    return create_app(load(sample_index))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def jpeg(sample_frame) -> bytes:
    return bytes(sample_frame["jpg"].iloc[5])


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_localhost_names_are_answered(client, host):
    assert client.get("/api/info", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "[::2]"])
def test_other_host_names_are_refused(client, host):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    for path in ("/", "/api/info", "/api/search?q=cat", "/thumb/0"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (host, path)
        assert b"vectors" not in response.content


def test_allowed_hosts_opt_in(sample_index):
    app = create_app(load(sample_index), allowed_hosts=["*.lan", "box"])
    with TestClient(app, base_url="http://box:8000") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": "nas.lan"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "localhost"}).status_code == 400  # not listed here


def test_uploads_only_as_the_page_sends_them(client, jpeg):
    # What a cross-origin page can send without a preflight: text/plain, form types.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = client.post("/api/image", content=jpeg, headers={"Content-Type": content_type})
        assert response.status_code == 415, content_type
    assert client.post("/api/image", content=jpeg).status_code == 415  # no type at all
    foreign = client.post("/api/image", content=jpeg, headers={**OCTET, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    own = client.post("/api/image?k=3", content=jpeg, headers={**OCTET, "Origin": LOCAL})
    assert own.status_code == 200
    assert own.json()["results"][0]["similarity"] > 0.999  # the image itself is in the index
    assert client.post("/api/image?k=3", content=jpeg, headers=OCTET).status_code == 200  # curl sends no Origin


def test_upload_without_a_model_is_refused_before_reading_or_decoding(sample_index, jpeg):
    index = load(sample_index)
    index.manifest = {**index.manifest, "model": None}
    with TestClient(create_app(index), base_url=LOCAL) as c:
        response = c.post("/api/image", content=jpeg, headers=OCTET)
    assert response.status_code == 503


@pytest.mark.parametrize("raw", ["99999999999999999999", str(2**63), str(-(2**63) - 1), "-1", "1e3", "0x10"])
def test_ids_beyond_int64_or_unknown_are_client_errors(client, raw):
    thumb = client.get(f"/thumb/{raw}")
    like = client.get(f"/api/like?id={raw}")
    assert thumb.status_code == 404, thumb.text
    assert like.status_code in (400, 404), like.text
    assert like.status_code == (400 if raw in ("1e3", "0x10") else 404)


def test_thumbnail_errors_name_no_local_path(tmp_path):
    secret = tmp_path / "secret-folder"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    good = tmp_path / "good.jpg"
    good.write_bytes(encode_image(photo_crops(1, seed=2)[0]))
    paths = [str(good)] + [str(secret / f"missing-{i}.jpg") for i in range(7)]
    frame = pd.DataFrame({"embedding": embedding_array(x, np.ones(8, bool)), "path": paths})
    (tmp_path / "emb").mkdir()
    frame.to_parquet(tmp_path / "emb" / "part-0.parquet")
    with dask.config.set(scheduler="sync"):
        build(str(tmp_path / "emb"), tmp_path / "index", image_column="path")
    with TestClient(create_app(load(tmp_path / "index")), base_url=LOCAL) as c:
        assert c.get("/thumb/0").status_code == 200
        response = c.get("/thumb/3")
    assert response.status_code == 404
    assert "secret-folder" not in response.text and str(tmp_path) not in response.text
    assert response.json() == {"error": "no image: the row's image is missing or cannot be read"}


def test_thumbnails_decode_within_the_budget(sample_index):
    """A PNG whose pixels exceed the budget is refused; a JPEG is decoded at a reduced scale."""
    png = solid_png(3000, 3000)  # 27 MB of RGB
    data, reason = thumbnail(png, max_bytes=8 * 2**20)
    assert data is None and "max_decode_bytes" in reason
    big_jpeg = encode_image(np.full((3000, 3000, 3), 120, np.uint8))
    data, reason = thumbnail(big_jpeg, max_bytes=8 * 2**20)
    assert reason is None and data is not None
    assert thumbnail(png)[0] is not None  # the default budget (256 MiB) takes it
    with pytest.raises(ValueError, match="max_decodes"):
        create_app(load(sample_index), max_decodes=0)
