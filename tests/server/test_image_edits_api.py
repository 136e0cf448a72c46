"""POST /v1/images/edits on the real server process serving a tiny Qwen-Image-Edit-2511 folder
(tests/qwen_image_edit_fixtures.py, Edit-Plus: 1 to 3 images; the edit areas made small by
tests/small_edit_areas.py): multipart `image`, JSON data URLs, two images as `image[]` through the official
openai client; the PNG decodes at the asked size and depends on the input image(s); the refusals (no
image, four images, not an image, an edit model on /generations) are one line."""

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
def folder(tmp_path_factory):
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    return write_qwen_image_edit(tmp_path_factory.mktemp("qwen-edit-server"), plus=True)


@pytest.fixture(scope="module")
def edit_server(folder):
    srv = EditServer(folder, folder.parent / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_edit(folder):
    """The Python API's edit of the same request (the same small areas, set in this process for the module)."""
    import torch
    from PIL import Image

    from lightx2v import LightX2V
    from lightx2v.pipelines import qwen_image_edit
    from tests.small_edit_areas import small_variants

    mp = pytest.MonkeyPatch()
    mp.setattr(qwen_image_edit, "VARIANTS", small_variants())
    api = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False)

    def edit(*pngs: bytes) -> np.ndarray:
        images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
        got = api.generate(FIELDS["prompt"], image=images if len(images) > 1 else images[0], height=64, width=96,
                           num_inference_steps=2, guidance_scale=1.0, seed=5)
        return np.asarray(got.images[0].convert("RGB"), dtype=np.float32)

    yield edit
    mp.undo()


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


def test_an_edit_decodes_at_the_size_and_follows_the_input_image(edit_server, api_edit):
    with edit_server.client() as c:
        a = c.post("/v1/images/edits", data=FIELDS, files={"image": ("a.png", _png(0), "image/png")})
        assert a.status_code == 200, a.text
        assert a.json()["size"] == "96x64" and len(a.json()["data"]) == 1
        url = "data:image/png;base64," + base64.b64encode(_png(-1)).decode()
        b = c.post("/v1/images/edits", json={**FIELDS, "image": [url]})  # JSON: a list of data URLs
        assert b.status_code == 200, b.text
    got_a, got_b = _decode(a.json()), _decode(b.json())
    assert got_a.shape == (64, 96, 3) == got_b.shape
    # same prompt and seed, another input image: another edit (a tiny random model moves pixels little),
    # and the Python API's pixels for the same input image
    assert not np.array_equal(got_a, got_b)
    assert np.array_equal(got_a, api_edit(_png(0)))


def test_two_images_through_the_openai_client(edit_server, api_edit):
    openai = pytest.importorskip("openai")
    from tests.server.conftest import API_KEY

    client = openai.OpenAI(base_url=edit_server.url + "/v1", api_key=API_KEY, max_retries=0)
    extra = {k: FIELDS[k] for k in ("steps", "guidance_scale", "seed")}
    one = client.images.edit(image=("a.png", _png(0)), prompt=FIELDS["prompt"], size="96x64", extra_body=extra)
    two = client.images.edit(image=[("a.png", _png(0)), ("b.png", _png(-1))], prompt=FIELDS["prompt"], size="96x64",
                             extra_body=extra)  # sent as `image[]`, in order
    got_one = _decode({"data": [{"b64_json": one.data[0].b64_json}]})
    got_two = _decode({"data": [{"b64_json": two.data[0].b64_json}]})
    assert got_one.shape == (64, 96, 3) == got_two.shape
    assert not np.array_equal(got_one, got_two)  # the second image conditions the edit
    assert np.array_equal(got_two, api_edit(_png(0), _png(-1)))  # both, in order


def test_refusals_are_one_line(edit_server):
    with edit_server.client() as c:
        none = c.post("/v1/images/edits", data=FIELDS)
        two = c.post("/v1/images/edits", data=FIELDS, files=[("image", (f"{i}.png", _png(i), "image/png"))
                                                             for i in range(4)])
        bad = c.post("/v1/images/edits", data=FIELDS, files={"image": ("x.png", b"not an image", "image/png")})
        gen = c.post("/v1/images/generations", json={"prompt": "a cat"})
    for r, param in ((none, "image"), (two, "image"), (bad, "image")):
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert "\n" not in r.json()["error"]["message"]
    assert "at most 3 input image" in two.json()["error"]["message"]
    assert gen.status_code == 400 and "/v1/images/edits" in gen.json()["error"]["message"]
