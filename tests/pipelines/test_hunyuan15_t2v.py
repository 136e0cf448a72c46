"""HunyuanVideo-1.5 text-to-video, whole pipeline, against diffusers' HunyuanVideo15Pipeline on one tiny
random folder written by diffusers in the released layout (tests/hunyuan15_fixtures.py): the same initial
latents give the same frames (within 1e-3), with CFG (the guider's scale) and without, with quoted text
in both prompts (the byT5 glyph branch); then detection, the defaults, the schedule and the request rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.hunyuan15_fixtures import GUIDANCE, LATENT, SHIFT, write_hunyuan15  # noqa: E402

H = W = 64          # latents 4 x 4
F = 5               # 2 latent frames
PROMPT = 'a neon sign reads "OPEN" above a red door'
NEG = 'blurry, the word "CLOSED"'


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15"))


@pytest.fixture(scope="module")
def ours(folder):
    return LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)


def _noise(seed=5):
    return torch.randn(1, LATENT, (F - 1) // 4 + 1, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


def _reference(ref, guidance, z, **kw):
    ref.guider = diffusers.ClassifierFreeGuidance(guidance_scale=guidance)
    with torch.no_grad():
        return ref(prompt=PROMPT, negative_prompt=NEG, height=H, width=W, num_frames=F, latents=z.clone(), **kw).frames


def test_matches_diffusers_with_cfg(folder, ours):
    z = _noise()
    want = _reference(folder[1], GUIDANCE, z, num_inference_steps=3, output_type="np")[0]
    got = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_frames=F, num_inference_steps=3,
                        latents=z, output_type="np")  # guidance: the folder's guider (6)
    assert got.frames.shape == want.shape == (F, H, W, 3) and got.frames.dtype == np.float32
    err = np.abs(got.frames - want).max()
    assert err < 1e-3, err
    assert got.stats["model_calls"] == 6


def test_matches_diffusers_without_cfg(folder, ours):
    """guidance 1: one branch a step (diffusers' guider then runs no negative prompt); latents compared."""
    z = _noise(6)
    want = _reference(folder[1], 1.0, z, num_inference_steps=2, output_type="latent")
    got = ours.generate(PROMPT, negative_prompt=NEG, height=H, width=W, num_frames=F, num_inference_steps=2,
                        guidance_scale=1.0, latents=z, output_type="latent")
    err = (got.latents - want).abs().max().item()
    assert err < 1e-4 * want.abs().max().item(), err
    assert got.stats["model_calls"] == 2


def test_defaults_come_from_the_folder(ours):
    d = ours.pipeline.model_config.defaults
    assert (d.guidance_scale, d.shift, d.num_inference_steps, d.fps, d.num_frames) == (GUIDANCE, SHIFT, 50, 24, 121)
    # target_size 640 at 16:9: the reference's bucket
    assert (d.height, d.width) == (480, 848)
    assert ours.pipeline.model_config.family == "hunyuanvideo-1.5"


@pytest.mark.parametrize("target", [640, 960, 512])
def test_default_size_is_diffusers(target):
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    from lightx2v.models.hunyuan15.layouts import default_size

    want = HunyuanVideo15ImageProcessor(vae_scale_factor=16).calculate_default_height_width(9, 16, target)
    assert default_size(target) == tuple(want)


@pytest.mark.parametrize("n, shift", [(3, 5.0), (50, 9.0), (8, 7.0)])
def test_schedule_is_diffusers(n, shift):
    from lightx2v.models.hunyuan15.schedule import HunyuanEuler

    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])
    ours = HunyuanEuler()
    ours.set_timesteps(n, shift=shift)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.timesteps, ref.timesteps)


def test_vae_is_tiled_by_default(ours):
    vae = ours.pipeline.vae
    assert vae.tiling is not None and vae.tiling.tile == 256
    assert any("tiled decode/encode by default" in line for line in ours.pipeline.engine_log)


def test_the_same_seed_gives_the_same_video(ours):
    kw = dict(height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    a, b = ours.generate(PROMPT, seed=11, **kw).latents, ours.generate(PROMPT, seed=11, **kw).latents
    assert torch.equal(a, b)
    assert (a - ours.generate(PROMPT, seed=12, **kw).latents).abs().max() > 1e-3


@pytest.mark.parametrize("kw, field", [
    (dict(height=72), "height"),        # not a multiple of 16
    (dict(num_frames=6), "num_frames"),  # not 4k+1
    (dict(solver="unipc"), "solver"),
])
def test_request_rules(ours, kw, field):
    args = dict(height=H, width=W, num_frames=F, num_inference_steps=2, output_type="np") | kw
    with pytest.raises(InputError) as err:
        ours.generate(PROMPT, **args)
    assert err.value.field == field


def test_other_pipeline_class_is_refused_by_name(folder, tmp_path):
    """model_index.json decides: an unknown pipeline class is refused naming it (I2V: test_hunyuan15_i2v.py)."""
    import json
    import shutil

    from lightx2v.errors import CheckpointError

    other = tmp_path / "other"
    shutil.copytree(folder[0], other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "HunyuanVideo15Pipeline2"}))
    with pytest.raises(CheckpointError, match="HunyuanVideo15Pipeline2"):
        LightX2V.from_pretrained(other, device="cpu", dtype=torch.float32)


def test_text_to_video_refuses_an_image(ours):
    from PIL import Image

    with pytest.raises(InputError) as err:
        ours.generate(PROMPT, image=Image.new("RGB", (64, 64)), height=H, width=W, num_frames=F,
                      num_inference_steps=2, output_type="latent")
    assert err.value.field == "image" and "text-to-video" in str(err.value)
