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
from diffusers import (  # noqa: E402
    AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline as RefPipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer, tiny_text_config  # noqa: E402
from lightx2v.pipelines.qwen_image import pack, unpack  # noqa: E402

DIT = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
           joint_attention_dim=32, axes_dims_rope=[4, 6, 6])
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
# Qwen/Qwen-Image's scheduler_config.json
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
                 shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
H, W = 64, 96  # latents 8 x 12, 4 x 6 tokens
PROMPT, NEG = "a red cat on a mat", "blurry"


def _randomize(module, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith(("gamma", "norm.weight")) else noise * scale)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_image")
    torch.manual_seed(0)
    dit = QwenImageTransformer2DModel(**DIT).eval()
    _randomize(dit, 0.3, 1)
    vae = AutoencoderKLQwenImage(**VAE).eval()
    _randomize(vae, 0.2, 2)
    te = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    _randomize(te, 0.2, 3)
    build_tiny_tokenizer(root / "_tok")
    from transformers import AutoTokenizer

    ref = RefPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=te,
                      tokenizer=AutoTokenizer.from_pretrained(str(root / "_tok")), transformer=dit)
    ref.save_pretrained(str(root / "model"))
    return root / "model", ref


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
