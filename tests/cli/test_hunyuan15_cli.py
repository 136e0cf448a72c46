"""`lightx2v generate` and `lightx2v info` end to end on tiny HunyuanVideo-1.5 T2V and I2V folders in the diffusers
layout (tests/hunyuan15_fixtures.py): an mp4 of the asked size and frame count at the family's 24 fps,
the sidecar naming the family and the folder's guidance and shift; `info --json`; an I2V folder given
`--image` and no size: the mp4 at the size the image picks, and the one-line error without it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from lightx2v.cli.main import main  # noqa: E402
from lightx2v.io.video import probe_mp4  # noqa: E402
from tests.hunyuan15_fixtures import write_hunyuan15  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15cli"))[0]


def test_generate_writes_the_video(folder, tmp_path, capsys):
    out = tmp_path / "sign.mp4"
    args = ["generate", "--model-path", str(folder), "--prompt", 'a sign reads "HI"', "--size", "48x32",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out)]
    assert main(args) == 0
    info = probe_mp4(out)
    assert (info["frames"], info["width"], info["height"], info["codec"], info["fps"]) == (5, 48, 32, "h264", 24)
    assert capsys.readouterr().out.strip() == str(out)
    meta = json.loads((tmp_path / "sign.mp4.json").read_text())
    assert meta["family"] == "hunyuanvideo-1.5" and meta["task"] == "t2v" and meta["seed"] == 1
    assert meta["guidance_scale"] == 6.0 and meta["shift"] == 5.0  # the folder's guider and scheduler

    assert meta["num_frames"] == 5 and meta["width"] == 48 and meta["fps"] == 24


def test_info_json_names_the_family(folder, capsys):
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["task"], info["layout"]) == ("hunyuanvideo-1.5", "t2v", "diffusers")
    assert info["dit"]["num_layers"] == 2 and info["dit"]["hidden_size"] == 32
    # the text form prints the DiT by this family's own field names (not Wan's dim / ffn_dim)
    assert main(["info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "hunyuanvideo-1.5 t2v" in text and "hidden_size 32" in text and "num_layers 2" in text


@pytest.fixture(scope="module")
def i2v_folder(tmp_path_factory):
    from tests.hunyuan15_fixtures import write_hunyuan15_i2v

    return write_hunyuan15_i2v(tmp_path_factory.mktemp("hy15cli_i2v"))[0]


def test_generate_image_to_video(i2v_folder, tmp_path, capsys):
    """No --size: the video takes the bucket the image's ratio picks (48 x 80 for a 70 x 40 image)."""
    import numpy as np
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 70, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "cat.mp4"
    args = ["generate", "--model-path", str(i2v_folder), "--image", str(image), "--prompt", "a cat turns",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out)]
    assert main(args) == 0
    info = probe_mp4(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (5, 80, 48, 24)
    meta = json.loads((tmp_path / "cat.mp4.json").read_text())
    assert meta["family"] == "hunyuanvideo-1.5" and meta["task"] == "i2v"
    capsys.readouterr()
    # without the image: one line naming it, exit 2 (a request error, before the model loads)
    assert main(args[:3] + args[5:]) == 2
    err = capsys.readouterr().err.strip()
    assert "give the first frame" in err and len(err.splitlines()) == 1
