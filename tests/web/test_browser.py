"""The page in a real headless browser: Debian's Chromium driven by Playwright (the `browser` and `page`
fixtures of tests/web/conftest.py, shared with test_image_browser.py). Skips, saying why, when no browser
or no playwright is there (.ci/run installs the `chromium` package).

Set LIGHTX2V_UI_SCREENSHOT=docs/ui.png to (re)write the README's screenshot of a finished result.
"""

import os
import time

import pytest

from tests.web.conftest import UiProcess, httpx

@pytest.fixture(scope="module")
def ui(tiny_model, tmp_path_factory):
    from tests.server.test_loras import write_lora_dir

    root = tmp_path_factory.mktemp("ui-browser")
    proc = UiProcess(tiny_model, root / "data", "--lora-dir", str(write_lora_dir(root / "loras"))).start()
    yield proc
    proc.stop()


def fill(page, prompt: str, size=(16, 16), frames=5, steps=1) -> None:
    page.fill("#prompt textarea", prompt)
    for elem, value in (("#width", size[0]), ("#height", size[1]), ("#frames", frames), ("#steps", steps)):
        page.fill(f"{elem} input", str(value))


def test_generate_in_the_browser_shows_the_video(page):
    fill(page, "a lighthouse at dusk", size=(32, 16), frames=5, steps=2)
    page.fill("#seed input", "11")
    page.click("#generate")
    video = page.wait_for_selector("#result video[src]", timeout=120_000)
    assert video.get_attribute("src")
    page.wait_for_function("document.querySelector('#status textarea').value.startsWith('done')", timeout=60_000, polling=250)
    assert page.input_value("#seed-used textarea") == "11"
    assert "a lighthouse at dusk" in page.inner_text("#history")
    assert page.errors == []
    shot = os.environ.get("LIGHTX2V_UI_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_the_lora_picker_sends_the_chosen_file_and_strength(page, ui):
    fill(page, "a lantern with a style")
    page.click("#lora-select input")
    page.click('li[role="option"][aria-label="style.safetensors"]')
    strength = page.wait_for_selector('input[type="number"][aria-label="number input for strength: style.safetensors"]',
                                      timeout=20_000)  # the slider of the chosen file appears
    strength.fill("0.5")
    strength.press("Enter")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status textarea').value.startsWith('done')", timeout=120_000, polling=250)
    assert page.input_value("#lora textarea") == "style.safetensors:0.5"
    assert "style.safetensors × 0.5" in page.inner_text("#history")
    assert "LoRAs for this job: style.safetensors × 0.5" in ui.log()  # the worker switched to it
    assert page.errors == []


def test_bad_input_shows_one_line(page):
    fill(page, "x", frames=4)
    page.click("#generate")
    toast = page.wait_for_selector("text=num_frames must be 4k+1", timeout=20_000)
    assert "Traceback" not in toast.inner_text()


def test_cancel_stops_the_running_job(page, ui):
    fill(page, "a long run", size=(64, 64), frames=17, steps=1000)
    page.click("#generate")
    # generous bounds: on a loaded 2-core CI machine the first steps and the page's polling are slow
    page.wait_for_function("/in_progress: [1-9]/.test(document.querySelector('#status textarea').value)",
                           timeout=120_000)
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status textarea').value === 'cancelled'", timeout=120_000, polling=250)
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        tasks = http.get("/v1/tasks/").json()
        cancelled = [t for t in tasks.values() if t["status"] == "cancelled"]
        assert len(cancelled) == 1 and cancelled[0]["progress"] < 100
        # the worker notices at its next step: wait for it (bounded) rather than race it
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (http.get("/v1/tasks/queue/status").json()["active_count"]
                                               or "stopped: the job was deleted" not in ui.log()):
            time.sleep(0.2)
        assert http.get("/v1/tasks/queue/status").json()["active_count"] == 0  # the worker is free again
    assert "stopped: the job was deleted" in ui.log()


def test_a_reload_reattaches_to_the_running_job(page, ui):
    fill(page, "a long run to reload", size=(64, 64), frames=17, steps=1000)
    page.click("#generate")
    page.wait_for_function("/in_progress: [1-9]/.test(document.querySelector('#status textarea').value)",
                           timeout=120_000)
    page.reload(wait_until="domcontentloaded")  # the job is the store's: it keeps running
    page.wait_for_selector("#generate", timeout=30_000)
    page.errors.clear()  # the old page's stream, aborted by the reload, logs its abort: not the new page's
    page.wait_for_function("/started before this page loaded/.test(document.querySelector('#status textarea').value)",
                           timeout=60_000)
    page.click("#cancel")  # Cancel acts on the re-attached job
    page.wait_for_function("document.querySelector('#status textarea').value === 'cancelled'", timeout=120_000, polling=250)
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and http.get("/v1/tasks/queue/status").json()["active_count"]:
            time.sleep(0.2)
        assert http.get("/v1/tasks/queue/status").json()["active_count"] == 0
    assert page.errors == []
