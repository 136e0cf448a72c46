"""Qwen-Image-2.1's image-conditioned mode, whole pipeline, against diffusers' QwenImage21Pipeline on the
tiny folder of tests/qwen_image21_fixtures.py (whose processor is transformers' Qwen3VLProcessor): two
condition images read by Qwen3-VL (vision tower, deepstack, M-RoPE) and VAE-encoded into the DiT's image
slots, with CFG; the same initial latents give the same image within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402

H, W = 64, 96
PROMPT, NEG = "a red cat on a mat", "blurry"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.qwen_image21_fixtures import write_qwen_image21

    return write_qwen_image21(tmp_path_factory.mktemp("qwen21i"))


@pytest.fixture(scope="module")
def ours(folder):
    pipe = LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)
    pipe.pipeline.output_resolution = 128  # the condition images' area, small (the reference's output_resolution)
    return pipe


def _noise(seed=5):
    return torch.randn(1, 8, 1, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


def _reference(ref, z, **kw):
    with torch.no_grad():
        out = ref(prompt=PROMPT, height=H, width=W, latents=z.flatten(2).transpose(1, 2), output_type="np", **kw).images
    return out[..., :3]


def test_two_condition_images_match_diffusers(folder, ours):
    """Condition images read by Qwen3-VL (vision tower, deepstack, M-RoPE) and VAE-encoded into the DiT's
    image slots, with CFG; the condition area is made small on both sides (output_resolution 128)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (120, 80, 3), dtype=np.uint8))]
    z = _noise(9)
    want = _reference(folder[1], z, image=images, num_inference_steps=2, negative_prompt=NEG, true_cfg_scale=3.0,
                      output_resolution=128)
    got = ours.generate(PROMPT, image=images, negative_prompt=NEG, height=H, width=W, num_inference_steps=2,
                        guidance_scale=3.0, latents=z, output_type="np")
    err = np.abs(got.images - want).max()
    assert err < 1e-3, err
    plain = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_inference_steps=2, guidance_scale=3.0,
                          latents=z, output_type="np").images
    assert np.abs(plain - got.images).max() > 1e-3  # the images matter
