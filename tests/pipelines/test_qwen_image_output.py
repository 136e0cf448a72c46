"""Qwen-Image outputs: several images per prompt against diffusers' num_images_per_prompt (one seeded
draw of N noises, one batch), the output types (pil by default, np, latent), and the files by the
output path's extension (.png, .webp, .jpg; N images as NAME_i.png, written together, atomically)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402

H, W = 64, 96
PROMPT, NEG = "a red cat on a mat", "blurry"
FAST = dict(height=H, width=W, num_inference_steps=2, guidance_scale=1.0)


@pytest.fixture(scope="module")
def ours(qwen_image_t2i):
    return LightX2V.from_pretrained(qwen_image_t2i[0], device="cpu", dtype=torch.float32, progress=False)


def test_num_images_is_diffusers_num_images_per_prompt(qwen_image_t2i, ours):
    """The same seed gives the same N images as diffusers with a CPU generator of that seed (true CFG on):
    the noise is one draw of [N, ...], the prompt states repeated."""
    ref = qwen_image_t2i[1]
    with torch.no_grad():
        want = ref(prompt=PROMPT, negative_prompt=NEG, true_cfg_scale=4.0, height=H, width=W, num_inference_steps=2,
                   num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(21), output_type="np").images
    got = ours.generate(PROMPT, negative_prompt=NEG, guidance_scale=4.0, height=H, width=W, num_inference_steps=2,
                        num_images=2, seed=21, output_type="np")
    assert got.images.shape == want.shape == (2, H, W, 3)
    assert np.abs(got.images - want).max() < 1e-3
    assert np.abs(got.images[0] - got.images[1]).max() > 1e-3  # two different noises
    assert got.stats["model_samples"] == 2 * 2 * 2  # batch 2, two branches, two steps
    one = ours.generate(PROMPT, negative_prompt=NEG, guidance_scale=4.0, height=H, width=W, num_inference_steps=2,
                        seed=21, output_type="np").images
    assert np.abs(one[0] - got.images[0]).max() < 1e-5  # the draw's first noise is the N = 1 noise


def test_given_latents_for_several_images(ours):
    z = torch.randn(2, 4, 1, H // 8, W // 8, generator=torch.Generator().manual_seed(3))
    both = ours.generate(PROMPT, num_images=2, latents=z, output_type="np", **FAST).images
    first = ours.generate(PROMPT, latents=z[:1], output_type="np", **FAST).images
    assert np.abs(both[0] - first[0]).max() < 1e-5
    with pytest.raises(InputError, match=r"latents must have shape \[2, 24, 16\]"):
        ours.generate(PROMPT, num_images=2, latents=z[:1], output_type="np", **FAST)


def test_output_types(ours):
    from PIL import Image

    pil = ours.generate(PROMPT, seed=4, num_images=2, **FAST)  # the default without a path: PIL images
    assert pil.path is None and len(pil.images) == 2 and all(isinstance(i, Image.Image) for i in pil.images)
    assert pil.images[0].size == (W, H)
    arr = ours.generate(PROMPT, seed=4, num_images=2, output_type="np", **FAST)
    assert arr.images.dtype == np.float32 and arr.images.shape == (2, H, W, 3)
    assert np.array_equal(np.asarray(pil.images[1]), (arr.images[1] * 255 + 0.5).astype(np.uint8))
    lat = ours.generate(PROMPT, seed=4, num_images=2, output_type="latent", **FAST)
    assert lat.images is None and lat.frames is None and lat.latents.shape == (2, (H // 16) * (W // 16), 16)


@pytest.mark.parametrize("name, fmt", [("a.png", "PNG"), ("a.webp", "WEBP"), ("a.jpg", "JPEG"), ("a.JPEG", "JPEG")])
def test_the_extension_decides_the_format(ours, tmp_path, name, fmt):
    from PIL import Image

    res = ours.generate(PROMPT, seed=2, output_path=str(tmp_path / name), **FAST)
    assert res.path == str(tmp_path / name) and res.paths == [res.path]
    with Image.open(res.path) as im:
        assert im.format == fmt and im.size == (W, H)
        err = np.abs(np.asarray(im.convert("RGB"), dtype=np.float32) - np.asarray(res.images[0], dtype=np.float32))
    # PNG lossless; JPEG q95 4:4:4 close (measured mean 2.7 of 255); lossy WebP halves the chroma, and the
    # tiny random model's image is noise, its worst case (measured mean 22): bounded loosely
    assert err.mean() < {"PNG": 1e-6, "JPEG": 5, "WEBP": 40}[fmt], err.mean()
    if fmt == "JPEG":  # the run's metadata in the JPEG comment
        with Image.open(res.path) as im:
            assert json.loads(im.info["comment"])["seed"] == 2
    assert json.loads((tmp_path / f"{name}.json").read_text())["family"] == "qwen-image"
    assert not list(tmp_path.glob(".*partial*"))


def test_several_images_are_indexed_files(ours, tmp_path):
    from PIL import Image

    res = ours.generate(PROMPT, seed=6, num_images=3, output_path=str(tmp_path / "cat.webp"), **FAST)
    want = [str(tmp_path / f"cat_{i}.webp") for i in range(3)]
    assert res.paths == want and res.path == want[0] and not (tmp_path / "cat.webp").exists()
    for i, path in enumerate(want):
        with Image.open(path) as im:
            assert im.format == "WEBP"
        assert json.loads((tmp_path / f"cat_{i}.webp.json").read_text())["image_index"] == i
    folder = ours.generate(PROMPT, seed=6, num_images=2, output_path=str(tmp_path / "out") + "/", **FAST)
    assert [p.rsplit("_", 1)[1] for p in folder.paths] == ["0.png", "1.png"]
    assert all(p.startswith(str(tmp_path / "out" / "qwen-image_t2i_")) for p in folder.paths)


def test_no_overwrite_checks_every_indexed_name_before_work(ours, tmp_path):
    (tmp_path / "x_1.png").write_bytes(b"keep")
    calls = []
    from lightx2v.config import SamplingParams

    with pytest.raises(InputError, match="x_1.png exists"):
        ours.run(SamplingParams(PROMPT, num_images=2, output_path=str(tmp_path / "x.png"), overwrite=False,
                                callback=lambda info: calls.append(info), **FAST))
    assert not calls and (tmp_path / "x_1.png").read_bytes() == b"keep" and not (tmp_path / "x_0.png").exists()


@pytest.mark.parametrize("kw, match", [
    (dict(output_path="a.mp4"), "is a video"),
    (dict(output_type="gif"), "is a video"),
    (dict(num_images=0), "num_images must be"),
    (dict(num_images=2, output_path="a.gif"), "images were asked for"),
])
def test_refused(ours, tmp_path, kw, match):
    if "output_path" in kw:
        kw = kw | {"output_path": str(tmp_path / kw["output_path"])}
    with pytest.raises(InputError, match=match):
        ours.generate(PROMPT, **FAST, **kw)


def test_a_video_model_refuses_num_images(tiny_diffusers_dir):
    from lightx2v.config import SamplingParams
    from lightx2v.loading.detect import detect
    from lightx2v.pipelines.request import prepare_request

    mc = detect(tiny_diffusers_dir)
    with pytest.raises(InputError, match="num_images is for image models") as err:
        prepare_request(mc, SamplingParams("a cat", num_images=2, height=64, width=64, num_frames=5))
    assert err.value.field == "num_images"
