"""The browse page's endpoints in process (the ASGI app called directly, no server process):
the seeded landing sample, one row with its full image, file names, and the text tower's state."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from dask_clip.index import load
from dask_clip.index.server import TextTower, create_app


def call(app, target: str, method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP request through the ASGI app: (status, headers, body)."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent, messages = False, []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = messages[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])


def get_json(app, target: str) -> tuple[int, dict]:
    status, _, body = call(app, target)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def index(sample_index):
    return load(sample_index)


@pytest.fixture(scope="module")
def app(index):
    return create_app(index)


def test_sample_is_seeded_paged_and_covers_every_row(app, index):
    status, first = get_json(app, "/api/sample?seed=7&k=200")
    assert status == 200 and first["total"] == len(index) == 316
    again = get_json(app, "/api/sample?seed=7&k=200")[1]
    assert [r["id"] for r in again["results"]] == [r["id"] for r in first["results"]]
    second = get_json(app, "/api/sample?seed=7&k=200&offset=200")[1]
    ids = [r["id"] for r in first["results"] + second["results"]]
    assert sorted(ids, key=int) == [str(i) for i in index.ids]  # every row once, over the pages
    assert [r["rank"] for r in second["results"]] == list(range(201, 317))
    other = get_json(app, "/api/sample?seed=8&k=200")[1]
    assert [r["id"] for r in other["results"]] != [r["id"] for r in first["results"]]
    row = first["results"][0]
    expected = index.rows([int(row["id"])]).iloc[0]
    assert row["name"] == row["key"] == expected["key"] and row["caption"] == expected["caption"]
    assert row["similarity"] is None and set(row["scores"]) == {"aesthetic"}
    assert get_json(app, "/api/sample?seed=-1")[0] == 400
    assert get_json(app, "/api/sample?seed=1&offset=x")[0] == 400
    assert get_json(app, "/api/sample?seed=1&offset=999")[1]["results"] == []


def test_row_and_full_image(app, index, sample_frame):
    row_id = int(index.ids[12])
    status, body = get_json(app, f"/api/row/{row_id}")
    assert status == 200 and body["id"] == str(row_id)
    expected = index.rows([row_id]).iloc[0]
    assert body["row"]["key"] == expected["key"] and body["row"]["caption"] == expected["caption"]
    assert body["row"]["aesthetic"] == pytest.approx(expected["aesthetic"])
    assert "jpg" not in body["row"] or body["row"]["jpg"] is None  # bytes never go out as JSON
    status, headers, data = call(app, f"/image/{row_id}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    source_row = int(expected["source_row"])
    original = Image.open(io.BytesIO(sample_frame["jpg"].iloc[source_row]))
    shown = Image.open(io.BytesIO(data))
    scale = min(1.0, 1280 / max(original.size))  # re-encoded, at most 1280 px on its longest side
    assert abs(shown.size[0] - original.size[0] * scale) <= 1 and abs(shown.size[1] - original.size[1] * scale) <= 1
    for bad in ("999999999999", "abc", "-1", "1" * 40):
        assert call(app, f"/api/row/{bad}")[0] == 404
        assert call(app, f"/image/{bad}")[0] == 404


def test_text_tower_states(index, sample_index):
    tower = TextTower(index, None)
    assert tower.state == "idle" and tower.available
    app = create_app(index)
    assert get_json(app, "/api/info")[1]["text_state"] == "idle"
    app.state.text_tower.load()
    info = get_json(app, "/api/info")[1]
    assert info["text_state"] == "ready" and info["text"] is True
    status, body = get_json(app, "/api/search?q=a%20cat&k=5")
    expected = index.search_text("a cat", k=5)
    assert status == 200 and [r["id"] for r in body["results"]] == [str(i) for i in expected["id"]]

    given = TextTower(index, lambda texts: np.ones((len(texts), index.dim), np.float32))
    assert given.state == "ready"
    index.manifest = {**index.manifest, "model": None}  # an index that records no model
    try:
        app = create_app(index)
        info = get_json(app, "/api/info")[1]
        assert info["text_state"] == "unavailable" and info["text"] is False
        assert get_json(app, "/api/search?q=cat")[0] == 503
    finally:
        index.manifest = load(sample_index).manifest
