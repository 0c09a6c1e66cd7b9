"""The browse page in a real headless Chromium (Debian's), driven by Playwright.

Types a query, waits for the grid, clicks a result, checks the "more like this" search, uploads
an image, and saves screenshots (``$DASK_CLIP_TEST_ARTIFACTS`` if set, else pytest's tmp dir).
Skips only where Chromium is not installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import HOSTILE_CAPTION, Server
from playwright.sync_api import expect, sync_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,  # a browser process
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"),
]
# Debian's Chromium, headless, without the background services that would try the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000

expect.set_options(timeout=TIMEOUT_MS)


def wait_for_images(page, timeout: float = 60.0) -> None:
    """Until every thumbnail of the grid has loaded (polled: the page's CSP forbids eval)."""
    import time

    script = "() => [...document.querySelectorAll('#grid .card img')].every(i => i.complete && i.naturalWidth > 0)"
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, "thumbnails did not load"
        time.sleep(0.1)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DASK_CLIP_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(sample_index):
    running = Server(sample_index)
    yield running
    running.stop()


def test_search_click_more_like_this(browser, server, artifacts, sample_frame, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url)
    expect(page.locator("#status")).to_contain_text("of 316 images")  # the landing sample

    page.fill("#query", "an astronaut in a space suit")
    page.press("#query", "Enter")
    expect(page.locator("#grid")).to_have_attribute("data-query", "an astronaut in a space suit")
    expect(page.locator("#grid .card")).to_have_count(24)
    wait_for_images(page)
    ranks = page.eval_on_selector_all("#grid .card", "cards => cards.map(c => Number(c.dataset.rank))")
    assert ranks == list(range(1, 25))
    page.screenshot(path=str(artifacts / "serve-text-search.png"), full_page=True)

    third = page.locator("#grid .card").nth(2)
    clicked = third.get_attribute("data-id")
    third.locator(".more").click()
    expect(page.locator("#grid")).to_have_attribute("data-query", f"more like #{clicked}")
    wait_for_images(page)
    first = page.locator("#grid .card").first
    assert first.get_attribute("data-id") == clicked  # the row itself is the most similar
    assert "similarity 1.000" in first.locator(".meta").inner_text()
    assert page.locator("#grid .card").count() == 24
    page.screenshot(path=str(artifacts / "serve-more-like-this.png"), full_page=True)

    # upload: the image of row 12 finds row 12 first
    upload = tmp_path / "query.jpg"
    upload.write_bytes(sample_frame["jpg"].iloc[12])
    page.set_input_files("#upload", str(upload))
    expect(page.locator("#grid")).to_have_attribute("data-query", "uploaded image")
    # images kept as bytes: the card is named by its key
    assert page.locator("#grid .card").first.locator(".name").inner_text() == sample_frame["key"].iloc[12]
    assert not errors, errors


def test_hostile_caption_is_shown_as_text(browser, server, sample_frame, artifacts, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    expect(page.locator("#status")).to_contain_text("images")
    page.fill("#k", "3")
    upload = tmp_path / "hostile.jpg"  # row 0, whose caption is hostile, comes back first
    upload.write_bytes(sample_frame["jpg"].iloc[0])
    page.set_input_files("#upload", str(upload))
    expect(page.locator("#grid .card")).to_have_count(3)
    first = page.locator("#grid .card").first
    assert first.locator(".caption").text_content() == HOSTILE_CAPTION
    assert page.locator("#grid script, #grid b, #grid img[src='x']").count() == 0
    sources = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert all(src.startswith("/thumb/") for src in sources)
    assert page.evaluate("window.__xss") is None
    page.screenshot(path=str(artifacts / "serve-hostile-caption.png"))
