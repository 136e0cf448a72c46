"""Image-to-video and first-last-frame through the page's stable `/generate` endpoint (gradio_client,
`handle_file`), on tiny I2V / FLF2V checkpoints (tests/pipelines/test_wan_i2v.py's writer): the
video is a valid mp4 and depends on the images; and per-job LoRAs (--lora-dir) on the I2V app: a
LoRA changes the video, the next job without it is the LoRA-free video again. One app per task."""

import pytest

from tests.server.test_loras import frames_of, write_lora_dir
from tests.web.conftest import UiProcess

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")  # the tiny I2V checkpoint is written by diffusers' save_pretrained

SIZE = 32  # a square image at a square 32x32 request: the video is 32x32
RUN = dict(prompt="the cat turns its head", height=SIZE, width=SIZE, num_frames=5, num_inference_steps=1, seed=5,
           api_name="/generate")


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """{task: (gradio client, process)}: the I2V app (with --lora-dir) and the FLF2V app, started
    side by side (each start is mostly one core's imports)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.pipelines.test_wan_i2v import _write_i2v

    procs = {}
    for task in ("i2v", "flf2v"):
        root = tmp_path_factory.mktemp(f"ui-{task}")
        extra = ("--lora-dir", str(write_lora_dir(root / "loras"))) if task == "i2v" else ()
        procs[task] = UiProcess(_write_i2v(root, flf2v=task == "flf2v"), root / "data", *extra)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: p.start(), procs.values()))
        yield {task: (gradio_client.Client(p.url + "/", verbose=False), p) for task, p in procs.items()}
    finally:
        for p in procs.values():
            if p.proc is not None:
                p.kill()  # no shutdown is tested here: a graceful stop waits ~10 s for gradio's open streams


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tests.pipelines.test_wan_i2v import _image

    folder = tmp_path_factory.mktemp("ui-images")
    paths = [folder / f"{i}.png" for i in range(3)]
    for seed, path in enumerate(paths, start=1):
        _image(seed, (SIZE, SIZE)).save(path)
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def i2v(apps):
    return apps["i2v"]


def _video(path, tmp_path, name):
    from pathlib import Path

    from lightx2v.io.video import probe_mp4

    meta = probe_mp4(path)
    assert (meta["frames"], meta["width"], meta["height"]) == (5, SIZE, SIZE) and meta["codec"].startswith("h264")
    data = frames_of(Path(path).read_bytes(), tmp_path, name)
    frame = SIZE * SIZE * 3
    return data[:frame], data  # the first frame, every frame


def test_i2v_video_depends_on_the_image_and_takes_a_lora(i2v, images, tmp_path):
    from gradio_client import handle_file

    client, _ = i2v
    runs = [("a", images[0], None), ("b", images[1], None), ("a+lora", images[0], "style.safetensors:1.5"),
            ("a again", images[0], None)]
    out = {}
    for name, image, lora in runs:
        extra = {"lora": lora} if lora else {}
        out[name] = _video(client.predict(image=handle_file(image), **RUN, **extra), tmp_path, f"{len(out)}.mp4")
    assert out["a"][0] != out["b"][0]  # another image: another first frame
    assert out["a+lora"][1] != out["a"][1]  # the LoRA changes the video
    assert out["a again"][1] == out["a"][1]  # and the next job without it is the LoRA-free video, bit for bit


def test_i2v_without_an_image_is_one_line(i2v):
    client, _ = i2v
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(**RUN)
    text = str(err.value)
    assert "image" in text and "Traceback" not in text and "\n" not in text.strip()


def test_a_lora_not_offered_is_one_line(i2v, images):
    from gradio_client import handle_file

    client, _ = i2v
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(image=handle_file(images[0]), lora="../secret.safetensors", **RUN)
    text = str(err.value)
    assert "is not offered here; choose from: detail.safetensors, style.safetensors" in text and "\n" not in text.strip()


def test_flf2v_video_depends_on_both_images(apps, images, tmp_path):
    from gradio_client import handle_file

    client, _ = apps["flf2v"]
    one = _video(client.predict(image=handle_file(images[0]), last_image=handle_file(images[1]), **RUN),
                 tmp_path, "one.mp4")
    two = _video(client.predict(image=handle_file(images[0]), last_image=handle_file(images[2]), **RUN),
                 tmp_path, "two.mp4")
    assert one[1] != two[1]  # the same first image, another last frame: another video
