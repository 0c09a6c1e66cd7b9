"""The browse page on the README's own flow, in a real headless Chromium (Debian's) via Playwright.

``dask-clip embed FOLDER emb``, ``dask-clip index emb idx``, ``dask-clip serve idx`` with no option
but the model folder (the tiny seeded model: no weights can be downloaded here). ``serve`` runs as
a subprocess, as users start it; ``embed`` (on the session cluster) and ``index`` run in this
process, where their output is the same and no interpreter or cluster has to start again. FOLDER holds the bundled sample's images written as JPEG files (real photos,
crops, planted copies and broken files). Nothing tells `index` or `serve` which column holds the
images or names the rows: the Parquet files `embed` writes record it.

Saves screenshots of the landing page and of a query (``$DASK_CLIP_TEST_ARTIFACTS`` if set, else
pytest's tmp dir).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from cli_support import run_main
from conftest import free_port
from playwright.sync_api import expect, sync_playwright
from test_index_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, wait_for_images

pytestmark = [
    pytest.mark.slow,  # a server process and a browser
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"),
]
K = 12


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample's 319 images as ``KEY.jpg`` files (3 of them broken)."""
    folder = tmp_path_factory.mktemp("photos")
    frame = pd.read_parquet(resources.files("dask_clip") / "data" / "sample.parquet")
    for key, data in zip(frame["key"], frame["jpg"]):
        (folder / f"{key}.jpg").write_bytes(data if data is not None else b"")
    return folder


@pytest.fixture(scope="module")
def served(photo_folder: Path, text_model_dir: str, tmp_path_factory: pytest.TempPathFactory, client):
    """The three README commands; yields (url, the serve process's terminal lines so far)."""
    work = tmp_path_factory.mktemp("readme-flow")
    run_main("embed", str(photo_folder), str(work / "emb"), "--model-dir", text_model_dir, client=client)
    run_main("index", str(work / "emb"), str(work / "idx"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONUNBUFFERED": "1"}
    log = work / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dask_clip.cli", "serve", str(work / "idx"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while "text search ready" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the text tower did not load within 120 s\n" + log.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DASK_CLIP_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.id)")


def loaded_widths(page) -> list[int]:
    return page.eval_on_selector_all("#grid .card img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_the_readme_flow_in_a_browser(served, browser, artifacts, photo_folder):
    url, terminal = served
    assert "loading the text tower" in terminal and "text search ready" in terminal
    files = {p.name for p in photo_folder.iterdir()}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # The landing page opens on a random sample, with pictures and the row count.
    page.goto(url + f"/?k={K}")
    expect(page.locator("#status")).to_contain_text("A random sample")
    expect(page.locator("#status")).to_contain_text("of 316 images")
    expect(page.locator("#grid .card")).to_have_count(K)
    wait_for_images(page)
    widths = loaded_widths(page)
    assert len(widths) == K and all(w > 0 for w in widths)
    assert "seed=" in page.url  # the sample is in the URL: a reload shows the same rows
    landing, landing_url = card_ids(page), page.url
    page.screenshot(path=str(artifacts / "serve-landing.png"))
    page.click("#more")
    expect(page.locator("#grid .card")).to_have_count(2 * K)
    assert card_ids(page)[:K] == landing and len(set(card_ids(page))) == 2 * K

    # A text query: k cards, thumbnails that load, file names on the cards, the query in the URL.
    query = "a cat on a sofa"
    page.fill("#query", query)
    page.press("#query", "Enter")
    expect(page.locator("#grid")).to_have_attribute("data-query", query)
    expect(page.locator("#grid .card")).to_have_count(K)
    wait_for_images(page)
    widths = loaded_widths(page)
    assert len(widths) == K and all(w > 0 for w in widths)
    names = page.eval_on_selector_all("#grid .card .name", "els => els.map(e => e.textContent)")
    assert len(names) == K and set(names) <= files
    assert "q=a+cat+on+a+sofa" in page.url and f"k={K}" in page.url
    found = card_ids(page)
    page.screenshot(path=str(artifacts / "serve-text-query.png"))

    # Reloading the URL restores the same results.
    page.reload()
    expect(page.locator("#grid")).to_have_attribute("data-query", query)
    expect(page.locator("#grid .card")).to_have_count(K)
    assert card_ids(page) == found
    assert page.input_value("#query") == query

    # A click opens the full image with its row; "more like this" there puts that row first.
    third = page.locator("#grid .card").nth(2)
    clicked, name = third.get_attribute("data-id"), third.locator(".name").text_content()
    third.click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-name")).to_have_text(name)
    expect(page.locator("#detail-row")).to_contain_text(str(photo_folder / name))
    page.wait_for_function("() => document.getElementById('detail-image').naturalWidth > 0")
    page.click("#detail-like")
    expect(page.locator("#grid")).to_have_attribute("data-query", f"more like #{clicked}")
    assert card_ids(page)[0] == clicked
    assert "similarity 1.000" in page.locator("#grid .card").first.locator(".meta").inner_text()
    assert f"like={clicked}" in page.url

    # Back returns to the text query, forward to "more like this"; a reload keeps it.
    page.go_back()
    expect(page.locator("#grid")).to_have_attribute("data-query", query)
    assert card_ids(page) == found
    page.go_forward()
    expect(page.locator("#grid")).to_have_attribute("data-query", f"more like #{clicked}")
    page.reload()
    expect(page.locator("#grid")).to_have_attribute("data-query", f"more like #{clicked}")
    assert card_ids(page)[0] == clicked

    # The keyboard: arrows move between cards, Enter opens one, Esc closes it, m: more like this.
    page.locator("#grid .card").first.focus()
    page.keyboard.press("ArrowRight")
    second = page.evaluate("() => document.activeElement.dataset.id")
    assert second == card_ids(page)[1]
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    page.keyboard.press("m")
    expect(page.locator("#grid")).to_have_attribute("data-query", f"more like #{second}")
    assert card_ids(page)[0] == second

    # The landing URL, opened again, shows the same sample.
    page.goto(landing_url)
    expect(page.locator("#status")).to_contain_text("A random sample")
    expect(page.locator("#grid .card")).to_have_count(K)
    assert card_ids(page) == landing
    assert not errors, errors
