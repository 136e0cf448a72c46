"""The web UI of an edit model: a real UI process (`tests.small_edit_areas` running lightx2v.web.ui, the edit
areas made small) on the tiny Qwen-Image-Edit folder (tests/qwen_image_edit_fixtures.py), through
gradio_client's `/generate`: `image` takes a list of files, the PNG has the asked size and depends on the
input image; no image is a one-line error."""

import numpy as np
import pytest

from tests.web.conftest import UiProcess

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")

ASK = dict(prompt="make the cat red", height=64, width=96, num_inference_steps=2, guidance_scale=1.0, seed=5)


class EditUi(UiProcess):
    module = "tests.small_edit_areas"
    env = {**UiProcess.env, "SMALL_EDIT_RUN": "lightx2v.web.ui"}


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    root = tmp_path_factory.mktemp("ui-qwen-edit")
    proc = EditUi(write_qwen_image_edit(root), root / "data").start()
    yield proc
    proc.kill()  # no shutdown is tested here: a graceful stop waits ~10 s for gradio_client's open streams


@pytest.fixture(scope="module")
def client(ui):
    return gradio_client.Client(ui.url + "/", verbose=False)


def test_the_edit_page_has_the_upload_and_auto_size(ui):
    from tests.web.conftest import httpx

    props = [c.get("props", {}) for c in httpx.get(ui.url + "/config", timeout=30).json()["components"]]
    upload = next(p for p in props if p.get("elem_id") == "images")
    assert upload.get("visible") is not False and upload.get("file_count") == "multiple"
    size = next(p for p in props if p.get("label") == "size")
    assert size["value"].startswith("auto") and size["choices"][1][0] == "1024x1024 (1:1)"  # the edit checkpoint's default square
    assert next(p for p in props if p.get("elem_id") == "num-images")["maximum"] == 1  # an edit makes one
    assert any(p.get("elem_id") == "cancel" for p in props)


def _png(tmp_path, name, pixels) -> str:
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def _rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_an_edit_takes_a_list_of_images_and_follows_them(client, tmp_path):
    from gradio_client import handle_file

    noise = _png(tmp_path, "noise.png", np.random.RandomState(0).rand(64, 96, 3) * 255)
    grey = _png(tmp_path, "grey.png", np.full((64, 96, 3), 128))
    a = client.predict(**ASK, image=[handle_file(noise)], api_name="/generate")
    b = client.predict(**ASK, image=[handle_file(grey)], api_name="/generate")
    assert len(a) == 1 == len(b)
    got_a, got_b = _rgb(a[0]), _rgb(b[0])
    assert got_a.shape == (64, 96, 3) == got_b.shape
    assert not np.array_equal(got_a, got_b)  # (a tiny random model moves pixels little; exact parity: tests/server)


def test_an_edit_without_an_image_is_one_line(client):
    with pytest.raises(Exception) as err:
        client.predict(**ASK, api_name="/generate")
    assert "image is missing" in str(err.value) and "\n" not in str(err.value).strip()
