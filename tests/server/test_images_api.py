"""The OpenAI Images API on the real server process serving the tiny Qwen-Image folder
(tests/qwen_image_fixtures.py), through the same job store and worker as the videos: b64_json and url
answers, n images, the output format, the pixels the Python API gives for the same seed, the refusals
(a bad field, /v1/videos on an image model, /v1/images on a video model, edits)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from tests.server.conftest import ServerProcess

pytest.importorskip("diffusers")

BODY = {"prompt": "a red cat on a mat", "size": "96x64", "steps": 2, "guidance_scale": 1.0, "seed": 5}


@pytest.fixture(scope="module")
def server(qwen_image_t2i, tmp_path_factory):
    srv = ServerProcess(qwen_image_t2i[0], tmp_path_factory.mktemp("qwen-server") / "data").start()
    yield srv
    srv.stop()


def _image(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_b64_json_equals_the_api_image(server, qwen_image_t2i):
    from lightx2v import LightX2V

    with server.client() as c:
        r = c.post("/v1/images/generations", json=BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 1 and body["size"] == "96x64" and body["output_format"] == "png"
    im = _image(base64.b64decode(body["data"][0]["b64_json"]))
    assert im.format == "PNG" and im.size == (96, 64)
    api = LightX2V.from_pretrained(qwen_image_t2i[0], device="cpu", dtype=torch.float32, progress=False)
    want = api.generate(BODY["prompt"], height=64, width=96, num_inference_steps=2, guidance_scale=1.0, seed=5)
    assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(want.images[0]))


def test_n_images_as_urls_in_webp(server):
    with server.client() as c:
        r = c.post("/v1/images/generations", json=BODY | {"n": 2, "response_format": "url", "output_format": "webp"})
        assert r.status_code == 200, r.text
        urls = [d["url"] for d in r.json()["data"]]
        assert len(urls) == 2 and all(u.startswith(server.url + "/v1/images/files/") and u.endswith(".webp") for u in urls)
        images = []
        for u in urls:
            got = c.get(u)
            assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
            images.append(np.asarray(_image(got.content).convert("RGB"), dtype=np.float32))
        assert np.abs(images[0] - images[1]).mean() > 1  # two noises, two images
        assert c.get("/v1/images/files/..%2Fstore.db").status_code == 404
        assert c.get("/v1/images/files/video_x.png").status_code == 404


def test_a_form_body_works_too(server):
    with server.client() as c:
        r = c.post("/v1/images/generations", data={k: str(v) for k, v in BODY.items()} | {"output_format": "jpeg"})
    assert r.status_code == 200, r.text
    assert _image(base64.b64decode(r.json()["data"][0]["b64_json"])).format == "JPEG"


@pytest.mark.parametrize("extra, param", [
    ({"size": "100x64"}, "size"),             # not a multiple of 16
    ({"size": "big"}, "size"),
    ({"n": 0}, "n"),
    ({"n": "two"}, "n"),
    ({"response_format": "file"}, "response_format"),
    ({"output_format": "gif"}, "output_format"),
    ({"prompt": " "}, "prompt"),
    ({"model": "dall-e-3"}, "model"),
    ({"steps": 1}, "steps"),                  # the schedule needs two
])
def test_bad_fields_are_400_naming_the_field(server, extra, param):
    with server.client() as c:
        r = c.post("/v1/images/generations", json=BODY | extra)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and "\n" not in r.json()["error"]["message"]


def test_an_image_model_refuses_videos_and_edits(server):
    with server.client() as c:
        r = c.post("/v1/videos", json={"prompt": "a cat", "size": "96x64"})
        assert r.status_code == 400 and "image model" in r.json()["error"]["message"]
        assert "/v1/images/generations" in r.json()["error"]["message"]
        e = c.post("/v1/images/edits", json={"prompt": "make it blue"})
        assert e.status_code == 400 and "not supported by this model" in e.json()["error"]["message"]
        assert "\n" not in e.json()["error"]["message"] and "/v1/images/generations" in e.json()["error"]["message"]
        assert c.post("/v1/images/generations", json=BODY, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_video_model_refuses_images(shared_server):
    with shared_server.client() as c:
        for path in ("/v1/images/generations", "/v1/images/edits"):
            r = c.post(path, json={"prompt": "a cat"})
            assert r.status_code == 400 and "video model" in r.json()["error"]["message"], r.text
