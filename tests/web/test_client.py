"""The web UI as a script drives it: a real `python -m lightx2v.web.ui` process with the tiny
model, driven by gradio_client's stable `/generate` endpoint, next to the HTTP API."""

import pytest

from tests.web.conftest import UiProcess, httpx

gradio_client = pytest.importorskip("gradio_client")

API_PARAMS = ["prompt", "negative_prompt", "image", "last_image", "height", "width", "num_frames",
              "num_inference_steps", "guidance_scale", "shift", "solver", "seed", "lora"]


@pytest.fixture(scope="module")
def ui(tiny_model, tmp_path_factory):
    proc = UiProcess(tiny_model, tmp_path_factory.mktemp("ui-client") / "data").start()
    yield proc
    proc.kill()  # no shutdown is tested here: a graceful stop waits ~10 s for gradio_client's open streams


@pytest.fixture(scope="module")
def client(ui):
    return gradio_client.Client(ui.url + "/", verbose=False)


def test_generate_endpoint_parameters_are_the_apis(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = info["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == API_PARAMS
    required = [p["parameter_name"] for p in params if not p["parameter_has_default"]]
    assert required == ["prompt"]
    assert list(info) == ["/generate"]  # the page's own events stay private


def test_generate_returns_a_valid_mp4(client, ui):
    from lightx2v.io.video import probe_mp4

    path = client.predict(prompt="a red ball", height=16, width=32, num_frames=5, num_inference_steps=1, seed=3,
                          api_name="/generate")
    meta = probe_mp4(path)
    assert (meta["frames"], meta["width"], meta["height"]) == (5, 32, 16)
    assert meta["codec"].startswith("h264")
    # the job went through the HTTP service's store: the API in the same process lists it, completed
    with httpx.Client(base_url=ui.url, timeout=10) as http:
        listed = http.get("/v1/videos").json()["data"]
    assert [(v["status"], v["size"], v["prompt"]) for v in listed] == [("completed", "32x16", "a red ball")]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "  "}, "prompt is empty; give a text describing the video"),
    ({"prompt": "x", "num_frames": 4, "height": 16, "width": 16}, "num_frames must be 4k+1"),
    ({"prompt": "x", "height": 16, "width": 20}, "width"),
    ({"prompt": "x", "solver": "nope", "height": 16, "width": 16}, "solver"),
    ({"prompt": "x", "lora": "style.safetensors:0.8"}, "offers no LoRA per request; start it with --lora-dir DIR"),
])
def test_bad_input_is_one_line_not_a_traceback(client, kwargs, message):
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(**kwargs, api_name="/generate")
    text = str(err.value)
    assert message in text
    assert "Traceback" not in text and "\n" not in text.strip()
