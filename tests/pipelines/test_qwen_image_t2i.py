"""Qwen-Image text-to-image, whole pipeline, against diffusers' QwenImagePipeline on one tiny random
folder written by diffusers in the released layout (model_index.json, transformer/, text_encoder/,
tokenizer/, vae/, scheduler/): the same initial latents give the same image (within 1e-3), with
true CFG and its norm rescale, and without; then the packing, the PNG file and the request rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from lightx2v.pipelines.qwen_image import pack, unpack  # noqa: E402

H, W = 64, 96  # latents 8 x 12, 4 x 6 tokens
PROMPT, NEG = "a red cat on a mat", "blurry"


@pytest.fixture(scope="module")
def folder(qwen_image_t2i):
    return qwen_image_t2i  # (model_dir, diffusers' pipeline): tests/qwen_image_fixtures.py


@pytest.fixture(scope="module")
def ours(folder):
    return LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)


def _noise(seed=5):
    return torch.randn(1, 4, 1, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def _reference(ref, latents, **kw):
    with torch.no_grad():
        return ref(prompt=PROMPT, height=H, width=W, latents=pack(latents), output_type="np", **kw).images


@pytest.mark.parametrize("cfg", [True, False])
def test_matches_diffusers(folder, ours, cfg):
    z = _noise()
    kw = dict(negative_prompt=NEG, true_cfg_scale=4.0) if cfg else dict(true_cfg_scale=1.0)
    want = _reference(folder[1], z, num_inference_steps=3, **kw)
    got = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_inference_steps=3,
                        guidance_scale=4.0 if cfg else 1.0, latents=z, output_type="np")
    assert got.images.shape == want.shape == (1, H, W, 3) and got.images.dtype == np.float32
    err = np.abs(got.images - want).max()
    assert err < 1e-3, err
    assert got.stats["model_calls"] == (6 if cfg else 3)


def test_cfg_changes_the_image(ours):
    """The guided and unguided runs differ (the norm-rescaled CFG is not a no-op)."""
    z = _noise()
    a = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_inference_steps=2, guidance_scale=4.0,
                      latents=z, output_type="np").images
    b = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_inference_steps=2, guidance_scale=1.0,
                      latents=z, output_type="np").images
    assert np.abs(a - b).max() > 1e-3


def test_packed_latents_are_accepted_and_pack_inverts(ours):
    z = _noise(7)
    assert torch.equal(unpack(pack(z), H // 8, W // 8), z)
    kw = dict(negative_prompt=NEG, height=H, width=W, num_inference_steps=2, guidance_scale=1.0, output_type="np")
    a = ours.generate(PROMPT, latents=z, **kw).images
    b = ours.generate(PROMPT, latents=pack(z), **kw).images
    assert np.array_equal(a, b)
    with pytest.raises(InputError, match="latents must have shape"):
        ours.generate(PROMPT, latents=torch.zeros(1, 5, 64), **kw)


def test_png_is_written_and_images_are_pil(ours, tmp_path):
    out = tmp_path / "cat.png"
    res = ours.generate(PROMPT, height=H, width=W, num_inference_steps=2, guidance_scale=1.0, seed=3,
                        output_path=str(out))
    from PIL import Image

    assert res.path == str(out) and out.is_file()
    assert isinstance(res.images, list) and isinstance(res.images[0], Image.Image) and res.images[0].size == (W, H)
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(res.images[0]))
    meta = json.loads((tmp_path / "cat.png.json").read_text())
    assert meta["family"] == "qwen-image" and meta["shift"] == "dynamic" and meta["seed"] == 3
    assert not list(tmp_path.glob(".*partial*"))


def test_the_same_seed_gives_the_same_image(ours):
    kw = dict(height=H, width=W, num_inference_steps=2, guidance_scale=1.0, output_type="np", seed=11)
    assert np.array_equal(ours.generate(PROMPT, **kw).images, ours.generate(PROMPT, **kw).images)


def test_a_fixed_shift_replaces_the_dynamic_one(ours):
    # 3 steps: with 2, shift_terminal pins both sigmas (1 and 0.02) whatever the shift
    kw = dict(height=H, width=W, num_inference_steps=3, guidance_scale=1.0, output_type="np", latents=_noise())
    a = ours.generate(PROMPT, **kw).images
    b = ours.generate(PROMPT, shift=3.0, **kw).images
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("kw, field", [
    (dict(height=72), "height"),            # not a multiple of 16
    (dict(num_frames=5), "num_frames"),     # one image
    (dict(solver="unipc"), "solver"),
    (dict(num_inference_steps=1), "num_inference_steps"),  # shift_terminal needs two steps
])
def test_request_rules(ours, kw, field):
    args = dict(height=H, width=W, num_inference_steps=2, output_type="np") | kw
    with pytest.raises(InputError) as err:
        ours.generate(PROMPT, **args)
    assert err.value.field == field
