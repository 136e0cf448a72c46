"""Qwen-Image-2.1 text-to-image, whole pipeline, against diffusers' QwenImage21Pipeline on one tiny random
folder written by diffusers in the released layout (tests/qwen_image21_fixtures.py): the same initial
latents give the same image (within 1e-3; the RGB of diffusers' RGBA), with true CFG and without, with the
prefix K/V kept (context_kv, as the reference's use_kv_cache) and without; the Turbo checkpoint on its
own sigma grid; the text states; detection and the request rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402

H, W = 64, 96  # latents 4 x 6
PROMPT, NEG = "a red cat on a mat", "blurry"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.qwen_image21_fixtures import write_qwen_image21

    return write_qwen_image21(tmp_path_factory.mktemp("qwen21"))


@pytest.fixture(scope="module")
def turbo(tmp_path_factory):
    from tests.qwen_image21_fixtures import write_qwen_image21

    return write_qwen_image21(tmp_path_factory.mktemp("qwen21t"), turbo=True)


@pytest.fixture(scope="module")
def ours(folder):
    return LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)


def _noise(seed=5):
    return torch.randn(1, 8, 1, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


def _reference(ref, z, **kw):
    with torch.no_grad():
        out = ref(prompt=PROMPT, height=H, width=W, latents=z.flatten(2).transpose(1, 2), output_type="np", **kw).images
    assert out.shape[-1] == 4  # RGBA
    return out[..., :3]


@pytest.mark.parametrize("cfg", [True, False])
def test_matches_diffusers(folder, ours, cfg):
    z = _noise()
    kw = dict(negative_prompt=NEG, true_cfg_scale=4.0) if cfg else {}
    want = _reference(folder[1], z, num_inference_steps=2, **kw)
    got = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_inference_steps=2,
                        guidance_scale=4.0 if cfg else 1.0, latents=z, output_type="np")
    assert got.images.shape == want.shape == (1, H, W, 3) and got.images.dtype == np.float32
    err = np.abs(got.images - want).max()
    assert err < 1e-3, err
    assert got.stats["model_calls"] == (4 if cfg else 2)


def test_without_kept_prefix_the_same_image(folder, ours):
    """context_kv off: the prefix is run again at every step (the reference's use_kv_cache=False)."""
    z = _noise(6)
    plain = LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False, context_kv=False)
    kw = dict(height=H, width=W, num_inference_steps=2, latents=z, output_type="np")
    a = ours.generate(PROMPT, **kw).images
    b = plain.generate(PROMPT, **kw).images
    want = _reference(folder[1], z, num_inference_steps=2, use_kv_cache=False)
    assert np.abs(a - b).max() < 1e-5 and np.abs(b - want).max() < 1e-3


def test_output_size_follows_the_last_image():
    from PIL import Image

    from lightx2v.pipelines.qwen_image21 import QwenImage21Pipeline

    p = QwenImage21Pipeline.fill_from_images(None, _params(image=[Image.new("RGB", (10, 10)), Image.new("RGB", (200, 100))]))
    assert (p.width, p.height) == (1440, 736)  # 1024^2 pixels at 2:1, sides rounded to 32


def _params(**kw):
    from lightx2v.config import SamplingParams

    return SamplingParams(prompt=PROMPT, **kw)


def test_text_states_match_diffusers(folder, ours):
    from lightx2v.models.qwen_image.text21 import encode_prompt21

    pipe = ours.pipeline
    for prompt in (PROMPT, ""):
        want, mask, slots = folder[1].encode_prompt(prompt, device=torch.device("cpu"))
        got = encode_prompt21(pipe.text_encoder, pipe.tokenizer, prompt)
        assert mask is None and not bool(slots.any())
        assert got.shape == want.shape and torch.equal(got, want)


def test_turbo_samples_on_its_grid(turbo):
    from lightx2v.models.qwen_image.layouts21 import QwenImage21Arch

    pipe = LightX2V.from_pretrained(turbo[0], device="cpu", dtype=torch.float32, progress=False)
    mc = pipe.model_config
    assert isinstance(mc.arch, QwenImage21Arch) and mc.arch.turbo
    assert mc.defaults.num_inference_steps == 3 and mc.defaults.guidance_scale == 1.0
    z = _noise(8)
    want = _reference(turbo[1], z)
    got = pipe.generate(PROMPT, height=H, width=W, latents=z, output_type="np")
    assert got.stats["model_calls"] == 3
    assert np.abs(got.images - want).max() < 1e-3
    with pytest.raises(InputError, match="num_inference_steps must be 3"):
        pipe.generate(PROMPT, height=H, width=W, num_inference_steps=6, output_type="np")


def test_detection_and_defaults(folder, ours):
    from lightx2v.models.qwen_image.dit21 import QwenImage21DiT
    from lightx2v.models.qwen_image.vae21 import QwenImage21VAE

    mc = ours.model_config
    assert (mc.family, mc.task) == ("qwen-image", "t2i") and not mc.arch.turbo
    assert (mc.defaults.num_inference_steps, mc.defaults.guidance_scale, mc.defaults.height) == (40, 1.0, 1024)
    assert isinstance(ours.pipeline.dit, QwenImage21DiT) and isinstance(ours.pipeline.vae, QwenImage21VAE)
    assert mc.spec.geometry(mc).size_multiple == 32
    with torch.device("meta"):  # what the memory estimate builds (runtime/memory.py, before loading)
        assert isinstance(mc.spec.dit_format.build(mc.dit), QwenImage21DiT)
    assert mc.spec.memory(mc, torch.bfloat16).context_bytes > 0


def test_request_rules_and_seeded_noise(ours):
    from PIL import Image

    with pytest.raises(InputError, match="multiple"):
        ours.generate(PROMPT, height=48, width=W, num_inference_steps=1, output_type="np")
    with pytest.raises(InputError, match="not a last frame"):
        ours.generate(PROMPT, image=Image.new("RGB", (64, 64)), last_image=Image.new("RGB", (64, 64)), height=H,
                      width=W, output_type="np")
    with pytest.raises(InputError, match="latents must have shape"):
        ours.generate(PROMPT, height=H, width=W, num_inference_steps=1, latents=torch.zeros(1, 5, 8), output_type="np")
    kw = dict(height=H, width=W, num_inference_steps=1, output_type="np")
    a = ours.generate(PROMPT, seed=3, **kw).images
    b = ours.generate(PROMPT, latents=torch.randn(1, 8, 1, 4, 6, generator=torch.Generator().manual_seed(3)), **kw).images
    assert np.array_equal(a, b)  # the seeded noise is one CPU draw of [N, z, 1, h, w]
