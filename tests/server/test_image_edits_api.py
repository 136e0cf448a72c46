"""POST /v1/images/edits on the real server process serving a tiny Qwen-Image-Edit folder
(tests/qwen_image_edit_fixtures.py; the edit areas made small by tests/small_edit_areas.py): multipart
`image`, JSON data URLs, the PNG decodes at the asked size and depends on the input image; the pixels
equal the Python API's for the same request; the refusals (no image, an edit model on /generations,
too many images for Qwen-Image-Edit)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from tests.server.conftest import ServerProcess

pytest.importorskip("diffusers")

FIELDS = {"prompt": "make the cat red", "size": "96x64", "steps": "2", "guidance_scale": "1.0", "seed": "5"}


class EditServer(ServerProcess):
    module = "tests.small_edit_areas"  # runs lightx2v.server


@pytest.fixture(scope="module")
def edit_server(tmp_path_factory):
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    root = tmp_path_factory.mktemp("qwen-edit-server")
    srv = EditServer(write_qwen_image_edit(root), root / "data").start()
    yield srv
    srv.stop()


def _png(seed: int, w: int = 96, h: int = 64) -> bytes:
    """Noise of `seed`; seed -1: a flat grey image (the farthest input from noise)."""
    from PIL import Image

    pixels = np.full((h, w, 3), 128, np.uint8) if seed < 0 else np.random.RandomState(seed).rand(h, w, 3) * 255
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _decode(body: dict) -> np.ndarray:
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    im.load()
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_an_edit_decodes_at_the_size_and_follows_the_input_image(edit_server):
    with edit_server.client() as c:
        a = c.post("/v1/images/edits", data=FIELDS, files={"image": ("a.png", _png(0), "image/png")})
        assert a.status_code == 200, a.text
        assert a.json()["size"] == "96x64" and len(a.json()["data"]) == 1
        url = "data:image/png;base64," + base64.b64encode(_png(-1)).decode()
        b = c.post("/v1/images/edits", json={**FIELDS, "image": [url]})  # JSON: a list of data URLs
        assert b.status_code == 200, b.text
    got_a, got_b = _decode(a.json()), _decode(b.json())
    assert got_a.shape == (64, 96, 3) == got_b.shape
    # same prompt and seed, another input image: another edit (a tiny random model moves pixels little,
    # so the bound is small, but a route that dropped the image would give identical pixels)
    assert np.abs(got_a - got_b).mean() > 0.5 and np.abs(got_a - got_b).max() > 20


def test_refusals_are_one_line(edit_server):
    with edit_server.client() as c:
        none = c.post("/v1/images/edits", data=FIELDS)
        two = c.post("/v1/images/edits", data=FIELDS, files=[("image[]", ("a.png", _png(0), "image/png")),
                                                             ("image[]", ("b.png", _png(1), "image/png"))])
        bad = c.post("/v1/images/edits", data=FIELDS, files={"image": ("x.png", b"not an image", "image/png")})
        gen = c.post("/v1/images/generations", json={"prompt": "a cat"})
    for r, param in ((none, "image"), (two, "image"), (bad, "image")):
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert "\n" not in r.json()["error"]["message"]
    assert "at most 1 input image" in two.json()["error"]["message"]
    assert gen.status_code == 400 and "/v1/images/edits" in gen.json()["error"]["message"]
