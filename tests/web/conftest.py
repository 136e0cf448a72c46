"""The real web UI process for the tests: `python -m lightx2v.web.ui` on a free 127.0.0.1 port with
the tiny random Wan2.1 checkpoint on the CPU (tests/server/conftest.py's approach: a job of
16x16 pixels takes about a second).

`UiProcess` starts it, waits for the HTTP service's /ready (the page and the API share the
process), and stops it with SIGTERM; its log is kept for assertions. One process per test module, but for
the tiny Qwen-Image T2I folder without flags: one process (`qwen_ui`) for test_images_ui.py and
test_image_browser.py, whose tests only add jobs of their own (a start costs 10-15 s on two cores).

The browser tests' fixtures (test_browser.py: the video page; test_image_browser.py: the image page):
`browser`, one headless Chromium per module (Debian's `chromium` driven by Playwright through its
executable, `playwright install` not needed; the test skips, saying why, without either), and `page`, a
fresh context on the module's `ui` process with the page loaded (`page.errors`: console and page errors).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.server.conftest import ServerProcess  # noqa: E402 (after the skips above)


class UiProcess(ServerProcess):
    """The UI process: the server's start / stop / log, another module (the page and the API share it)."""

    module = "lightx2v.web.ui"
    env = {"GRADIO_ANALYTICS_ENABLED": "False"}

    def __init__(self, model: Path, data_dir: Path, *extra: str):
        super().__init__(model, data_dir, *extra, api_key=None)
        self.log_path = data_dir.parent / f"ui-{self.port}.log"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from lightx2v.models.wan.tiny import write_official_checkpoint

    return write_official_checkpoint(tmp_path_factory.mktemp("ui-model") / "Wan2.1-T2V-tiny")


@pytest.fixture(scope="session")
def qwen_ui(qwen_image_t2i, tmp_path_factory):
    """The UI on the tiny Qwen-Image T2I folder, no flags; killed at the end (a graceful stop waits ~10 s for
    gradio's open streams; shutdown is tested elsewhere)."""
    proc = UiProcess(qwen_image_t2i[0], tmp_path_factory.mktemp("ui-qwen") / "data").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = next((p for p in (os.environ.get("LIGHTX2V_CHROMIUM"), shutil.which("chromium"),
                                 shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)
    if chromium is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set LIGHTX2V_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(ui.url + "/", wait_until="domcontentloaded")  # the page keeps a stream open: no network idle
    pg.wait_for_selector("#generate", timeout=30_000)
    yield pg
    context.close()
