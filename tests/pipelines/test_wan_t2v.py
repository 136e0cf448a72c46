"""The whole T2V pipeline vs diffusers' WanPipeline on identical tiny weights and latents."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lightx2v import LightX2V
from lightx2v.pipelines.base import GenerationCancelled
from tests.conftest import FRAMES, HEIGHT, WIDTH

PROMPT = "A cat walks on the grass, realistic style &amp; sunny."
NEG = "blurry, static"


@pytest.fixture(scope="module")
def reference_frames(tiny_diffusers_dir, tiny_latents):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_diffusers_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, negative_prompt=NEG, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
               num_inference_steps=3, guidance_scale=5.0, latents=tiny_latents.clone(), output_type="np")
    return np.asarray(out.frames[0], dtype=np.float32)


def _ours(path, latents, **kw):
    pipe = LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False)
    return pipe, pipe.generate(prompt=PROMPT, negative_prompt=NEG, height=HEIGHT, width=WIDTH,
                               num_frames=FRAMES, num_inference_steps=3, guidance_scale=5.0,
                               latents=latents.clone(), output_type="np", **kw)


def test_diffusers_layout_matches_wan_pipeline(tiny_diffusers_dir, tiny_latents, reference_frames):
    pipe, result = _ours(tiny_diffusers_dir, tiny_latents)
    assert pipe.model_config.layout == "diffusers"
    assert pipe.model_config.defaults.shift == 3.0  # from scheduler_config.json
    assert result.frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and result.frames.dtype == np.float32
    assert np.abs(result.frames - reference_frames).max() <= 1e-3
    assert reference_frames.std() > 0.01  # a real picture, not a constant


def test_official_layout_same_weights_same_frames(tiny_official_dir, tiny_latents, reference_frames, tiny_diffusers_dir):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    assert pipe.model_config.layout == "official"
    # Sample with diffusers' schedule to compare the loading of every official file with the oracle.
    ref_defaults = LightX2V.from_pretrained(tiny_diffusers_dir, device="cpu", dtype=torch.float32, progress=False).model_config.defaults
    pipe.pipeline.model_config = dataclasses.replace(pipe.model_config, defaults=dataclasses.replace(
        pipe.model_config.defaults, convention="diffusers", scheduler_config=ref_defaults.scheduler_config))
    r = pipe.generate(prompt=PROMPT, negative_prompt=NEG, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                      num_inference_steps=3, guidance_scale=5.0, shift=3.0, latents=tiny_latents.clone(),
                      output_type="np")
    assert np.abs(r.frames - reference_frames).max() <= 1e-3


def test_official_layout_uses_official_timesteps(tiny_official_dir, tiny_latents):
    seen = []
    _ours(tiny_official_dir, tiny_latents)  # loads fine
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    pipe.generate(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4, shift=3.0,
                  latents=tiny_latents.clone(), output_type="latent", callback=lambda info: seen.append(info.timestep))
    assert [round(t) for t in seen] == [999, 899, 749, 499]


def test_seed_is_reproducible_and_aliases(tiny_official_dir):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    a = pipe.generate(prompt=PROMPT, resolution=(32, 48), video_length=5, num_inference_steps=2, seed=7, output_type="latent")
    b = pipe.generate(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2, seed=7, output_type="latent")
    c = pipe.generate(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2, seed=8, output_type="latent")
    assert a.latents.shape == (1, 16, 2, 4, 6)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    assert a.seed == 7


def test_output_types(tiny_official_dir, tmp_path):
    from lightx2v.io.video import probe_mp4

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    kw = dict(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=1, seed=0)
    pt = pipe.generate(output_type="pt", **kw)
    assert isinstance(pt.frames, torch.Tensor) and pt.frames.shape == (5, 32, 48, 3)
    assert 0.0 <= float(pt.frames.min()) and float(pt.frames.max()) <= 1.0
    mp4 = pipe.generate(output_type="mp4", output_path=tmp_path / "v.mp4", **kw)
    assert mp4.path == str(tmp_path / "v.mp4")
    assert probe_mp4(mp4.path)["frames"] == 5
    assert set(mp4.timings) >= {"text_encoder", "denoise", "vae_decode", "save", "total"}


def test_callback_can_stop_cleanly(tiny_official_dir, tmp_path):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    out = tmp_path / "stopped.mp4"
    with pytest.raises(GenerationCancelled):
        pipe.generate(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=3, seed=0,
                      output_path=out, callback=lambda info: info.step < 1)
    assert not out.exists() and list(tmp_path.iterdir()) == []
