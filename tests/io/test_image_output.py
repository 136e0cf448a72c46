"""Image files by extension (.png, .webp, .jpg / .jpeg) and several images written together
(lightx2v.io.output.save_images): indexed names, checked before any work, none left on a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightx2v.errors import InputError
from lightx2v.io import output as out_mod
from lightx2v.io.output import check_output, image_targets, indexed_path, save, save_images


def _images(n, h=16, w=24):
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1).astype(np.float32)  # [H, W, 3] in [0, 1]
    return np.stack([np.clip(smooth + 0.1 * i, 0, 1) for i in range(n)])


@pytest.mark.parametrize("name, fmt, pil", [("a.png", "png", "PNG"), ("a.webp", "webp", "WEBP"),
                                            ("a.jpg", "jpeg", "JPEG"), ("a.jpeg", "jpeg", "JPEG")])
def test_the_extension_decides_the_image_format(tmp_path, name, fmt, pil):
    from PIL import Image

    assert check_output(tmp_path / name, 1).fmt == fmt
    img = _images(1)
    path = save(img, tmp_path / name, metadata={"seed": 1})
    with Image.open(path) as im:
        assert im.format == pil
        got = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    assert np.abs(got - img[0]).max() < (1 / 255 if fmt == "png" else 0.06)  # a smooth image: lossy is close
    assert json.loads((tmp_path / f"{name}.json").read_text()) == {"seed": 1}
    with pytest.raises(InputError, match=r"is one image, but 5 frames"):
        check_output(tmp_path / name, 5)


def test_a_folder_gets_the_jpg_extension(tmp_path):
    targets = image_targets(str(tmp_path) + "/", 1, True, "jpeg", "stem")
    assert targets[0].path == tmp_path / "stem.jpg"


def test_several_images_get_indexed_names(tmp_path):
    paths = save_images(_images(3), tmp_path / "x.png", metadata={"seed": 2})
    assert paths == [tmp_path / f"x_{i}.png" for i in range(3)] == [indexed_path(tmp_path / "x.png", i) for i in range(3)]
    assert [json.loads((tmp_path / f"x_{i}.png.json").read_text())["image_index"] for i in range(3)] == [0, 1, 2]
    assert not (tmp_path / "x.png").exists()


def test_every_indexed_name_is_checked_before_any_work(tmp_path):
    (tmp_path / "x_2.png").write_bytes(b"keep")
    with pytest.raises(InputError, match="x_2.png exists and overwrite is off"):
        check_output(tmp_path / "x.png", 1, overwrite=False, num_images=3)
    check_output(tmp_path / "x.png", 1, overwrite=False, num_images=2)  # x_0, x_1: free
    with pytest.raises(InputError, match="3 images were asked for but the output .* is a .mp4"):
        check_output(tmp_path / "x.mp4", 1, num_images=3)


def test_a_failure_leaves_none_of_the_images(tmp_path, monkeypatch):
    from lightx2v.io import image as image_mod

    real, calls = image_mod.encode_image, []

    def failing(frame, dst, fmt, metadata=None):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real(frame, dst, fmt, metadata)

    monkeypatch.setattr(image_mod, "encode_image", failing)
    with pytest.raises(OSError, match="disk full"):
        save_images(_images(3), tmp_path / "x.webp")
    assert list(tmp_path.iterdir()) == []  # the first image's temp file is gone too, nothing renamed
    assert out_mod.IMAGE_FORMATS == ("png", "webp", "jpeg")
