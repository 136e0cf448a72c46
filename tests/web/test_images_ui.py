"""The web UI of an image model, driven as a script drives it: a real `python -m lightx2v.web.ui` process on
the tiny Qwen-Image T2I folder (tests/qwen_image_fixtures.py) through gradio_client's stable `/generate`
(parameter names as LightX2V.generate's, num_images added; returns the image files): PNGs of the asked
size, n of them; the same pixels as the Python API for the same seed; a bad size is one line. Then an
edit app (tests/qwen_image_edit_fixtures.py, small edit areas): `image` takes a list of files and the
result depends on it."""

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")

API_PARAMS = ["prompt", "negative_prompt", "image", "height", "width", "num_inference_steps", "guidance_scale",
              "seed", "num_images"]
ASK = dict(prompt="a red cat on a mat", height=64, width=96, num_inference_steps=2, guidance_scale=1.0, seed=5)


@pytest.fixture(scope="module")
def ui(qwen_ui):
    return qwen_ui  # one process with test_images_ui.py / test_image_browser.py (tests/web/conftest.py)


@pytest.fixture(scope="module")
def client(ui):
    return gradio_client.Client(ui.url + "/", verbose=False)


def _rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_the_endpoint_parameters_are_the_apis(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = info["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == API_PARAMS
    assert [p["parameter_name"] for p in params if not p["parameter_has_default"]] == ["prompt"]
    assert list(info) == ["/generate"]


def test_generate_returns_pngs_of_the_asked_size_as_the_api_makes_them(client, qwen_image_t2i):
    import torch

    from lightx2v import LightX2V

    files = client.predict(**ASK, api_name="/generate")
    assert len(files) == 1 and _rgb(files[0]).shape == (64, 96, 3)
    api = LightX2V.from_pretrained(qwen_image_t2i[0], device="cpu", dtype=torch.float32, progress=False)
    want = api.generate(ASK["prompt"], height=64, width=96, num_inference_steps=2, guidance_scale=1.0, seed=5)
    assert np.array_equal(_rgb(files[0]), np.asarray(want.images[0], dtype=np.float32))
    two = client.predict(**ASK | {"num_images": 2, "seed": 6}, api_name="/generate")
    assert len(two) == 2 and np.abs(_rgb(two[0]) - _rgb(two[1])).mean() > 1


def test_a_bad_size_is_one_line(client):
    with pytest.raises(Exception) as err:
        client.predict(**ASK | {"width": 100}, api_name="/generate")
    message = str(err.value)
    assert "16" in message and "\n" not in message.strip()


def test_the_page_shows_the_image_controls(ui):
    from tests.web.conftest import httpx

    page = httpx.get(ui.url + "/config", timeout=30).json()
    labels = {c.get("props", {}).get("label") for c in page["components"]}
    assert {"prompt", "negative prompt", "size", "steps", "images", "result", "history (this session)"} <= labels
    sizes = next(c["props"]["choices"] for c in page["components"] if c.get("props", {}).get("label") == "size")
    assert [s[0] for s in sizes][:3] == ["1328x1328 (1:1)", "1664x928 (16:9)", "928x1664 (9:16)"]
    assert "1472x1136 (4:3)" in [s[0] for s in sizes]
