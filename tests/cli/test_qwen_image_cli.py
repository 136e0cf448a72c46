"""`lightx2v generate --task t2i` end to end on the tiny Qwen-Image folder (tests/qwen_image_fixtures.py):
the file by the extension, several images as NAME_i files, the default outputs/ folder, the pixels the
API gives for the same seed, and the refusals (a video extension, --num-images for a video model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v.cli.main import main  # noqa: E402

H, W = 64, 96


def _gen(model, *extra):
    return ["generate", "--model-path", str(model), "--task", "t2i", "--prompt", "a red cat on a mat",
            "--size", f"{W}x{H}", "--steps", "2", "--guidance", "1", "--device", "cpu", "--dtype", "fp32",
            "--quiet", "--seed", "7", *extra]


def test_png_file_equals_the_api_image(qwen_image_t2i, tmp_path, capsys):
    from PIL import Image

    from lightx2v import LightX2V

    out = tmp_path / "cat.png"
    assert main(_gen(qwen_image_t2i[0], "--output", str(out))) == 0
    assert capsys.readouterr().out.strip() == str(out)
    api = LightX2V.from_pretrained(qwen_image_t2i[0], device="cpu", dtype=torch.float32, progress=False)
    want = api.generate("a red cat on a mat", height=H, width=W, num_inference_steps=2, guidance_scale=1.0, seed=7)
    with Image.open(out) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), np.asarray(want.images[0]))
    meta = json.loads((tmp_path / "cat.png.json").read_text())
    assert (meta["family"], meta["task"], meta["seed"], meta["num_images"]) == ("qwen-image", "t2i", 7, 1)


def test_num_images_writes_indexed_webp_files(qwen_image_t2i, tmp_path, capsys):
    from PIL import Image

    assert main(_gen(qwen_image_t2i[0], "--output", str(tmp_path / "cat.webp"), "--num-images", "2", "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    want = [str(tmp_path / f"cat_{i}.webp") for i in range(2)]
    assert printed["paths"] == want and printed["path"] == want[0] and printed["settings"]["num_images"] == 2
    for path in want:
        with Image.open(path) as im:
            assert im.format == "WEBP" and im.size == (W, H)


def test_the_default_output_is_a_png_in_outputs(qwen_image_t2i, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_gen(qwen_image_t2i[0])) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith("outputs/qwen-image_t2i_") and path.endswith("_seed7.png") and (tmp_path / path).is_file()


@pytest.mark.parametrize("extra, words", [
    (("--output", "x.mp4"), "is a video"),
    (("--output", "x.gif", "--num-images", "2"), "2 images were asked for"),
    (("--num-images", "0"), "--num-images must be"),
])
def test_refusals_are_one_line(qwen_image_t2i, tmp_path, capsys, extra, words):
    extra = tuple(str(tmp_path / e) if e.startswith("x.") else e for e in extra)
    assert main(_gen(qwen_image_t2i[0], *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert not list(tmp_path.glob("x*"))


def test_a_video_model_refuses_num_images(tiny_official_dir, tmp_path, capsys):
    args = ["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--size", "48x32", "--frames", "1",
            "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--num-images", "2",
            "--output", str(tmp_path / "v.png")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--num-images is for image models" in err and not list(tmp_path.iterdir())
