"""The image page in a real headless browser (the `browser` / `page` fixtures of tests/web/conftest.py) on a
`lightx2v ui` process serving the tiny Qwen-Image T2I folder (tests/qwen_image_fixtures.py): Generate fills
the gallery with PNGs of the asked size and no console error; Cancel stops the running job in the worker;
a reloaded page re-attaches to the page's job (queued behind another one here, so nothing races the
reload) and shows its images when it finishes. One process, shared with test_images_ui.py
(tests/web/conftest.py's `qwen_ui`)."""

import threading
import time

import pytest

from tests.web.conftest import httpx

pytest.importorskip("diffusers")

LONG = 1000  # steps of a job that runs until it is cancelled (the most the scheduler allows)


@pytest.fixture(scope="module")
def ui(qwen_ui):
    return qwen_ui  # one process with test_images_ui.py / test_image_browser.py (tests/web/conftest.py)


def fill(page, prompt: str, size=(32, 32), steps=2, images=1, seed=None) -> None:
    page.fill("#prompt textarea", prompt)
    for elem, value in (("#width", size[0]), ("#height", size[1]), ("#steps", steps), ("#num-images", images)):
        page.fill(f"{elem} input", str(value))
    if seed is not None:
        page.fill("#seed input", str(seed))


def status_is(page, js_test: str, timeout_ms: int = 60_000) -> str:
    """Wait (polling every 250 ms) until the status line `s` passes `js_test`, a JS expression of s."""
    page.wait_for_function(f"(() => {{ const s = document.querySelector('#status textarea').value; return {js_test}; }})()",
                           timeout=timeout_ms, polling=250)
    return page.input_value("#status textarea")


def gallery_widths(page, count: int) -> list:
    """The natural widths of the gallery's images once `count` of them have loaded."""
    page.wait_for_function(f"(() => {{ const im = [...document.querySelectorAll('#result img')]; "
                           f"return im.length === {count} && im.every(i => i.complete && i.naturalWidth > 0); }})()",
                           timeout=30_000, polling=250)
    return page.eval_on_selector_all("#result img", "im => im.map(i => i.naturalWidth)")


def wait_worker_free(ui) -> int:
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and http.get("/v1/tasks/queue/status").json()["active_count"]:
            time.sleep(0.25)
        return http.get("/v1/tasks/queue/status").json()["active_count"]


def test_generate_shows_the_images_in_the_gallery(page):
    fill(page, "a lighthouse at dusk", size=(48, 32), images=2, seed=11)
    page.click("#generate")
    assert status_is(page, "s.startsWith('done')").endswith("2 image(s)")
    assert gallery_widths(page, 2) == [48, 48]
    assert page.input_value("#seed-used textarea") == "11"
    assert "a lighthouse at dusk" in page.inner_text("#history")
    assert page.errors == []


def test_cancel_stops_the_running_job(page, ui):
    fill(page, "a long run", steps=LONG)
    page.click("#generate")
    status_is(page, "s.startsWith('in_progress: ')")  # the worker has it (the steps stop at the next one)
    page.click("#cancel")
    status_is(page, "s === 'cancelled'")
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        cancelled = [t for t in http.get("/v1/tasks/").json().values() if t["status"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["progress"] < 100
    assert wait_worker_free(ui) == 0  # the worker stopped at its next step
    assert page.errors == []


def test_a_reload_reattaches_and_shows_the_finished_images(page, ui):
    blocker = {}  # an API client's long job keeps the worker busy: the page's job waits, queued, behind it

    def block():
        with httpx.Client(base_url=ui.url, timeout=120) as http:
            blocker["answer"] = http.post("/v1/images/generations",
                                          json={"prompt": "busy", "size": "32x32", "steps": LONG}).status_code

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not http.get("/v1/tasks/queue/status").json()["is_processing"]:
            time.sleep(0.25)
        busy = http.get("/v1/tasks/queue/status").json()["current_task"]
        assert busy
        fill(page, "a red kite", size=(32, 48), seed=3)
        page.click("#generate")
        status_is(page, "s.startsWith('queued')")
        page.reload(wait_until="domcontentloaded")  # the page's job is the store's: it stays queued
        page.wait_for_selector("#generate", timeout=30_000)
        page.errors.clear()  # the old page's stream, aborted by the reload, logs its abort: not the new page's
        status_is(page, "/^queued: 0% \\(.*started before this page loaded\\)$/.test(s)")
        assert http.delete(f"/v1/tasks/{busy}").json()["stop_status"] == "success"
    thread.join(60)
    assert blocker.get("answer") == 409  # the API client learns its job was cancelled
    assert status_is(page, "s.startsWith('done')") == "done: 1 image(s)"  # the re-attached page follows it to the end
    assert gallery_widths(page, 1) == [32]
    assert wait_worker_free(ui) == 0
    assert page.errors == []
