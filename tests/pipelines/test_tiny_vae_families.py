"""`tiny_vae=` on Wan2.2 (A14B: the Wan2.1 latents, taew2_1; TI2V-5B: taew2_2 / lighttaew2_2) and on
HunyuanVideo-1.5 (taehv1_5 / lighttaehy1_5), through each family's "tiny_vae" component.

Tiny random folders (tests/wan22_fixtures.py; tests/hunyuan15_fixtures.py with the release's 32 latent
channels, which the tiny VAEs take) and random TAEHV files of the released shapes: madebyollin's kinds
as fp16 .pth, LightX2V's as fp32 trained weights in .safetensors. A whole generation decodes with the
tiny VAE: the same latents and the same frame shape as with the full VAE, and the frames are the tiny
VAE's decode of those latents.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lightx2v import LightX2V
from lightx2v.api import with_tiny_vae
from lightx2v.config import EngineConfig, SamplingParams
from lightx2v.errors import CheckpointError
from lightx2v.loading.detect import detect
from lightx2v.models.wan.taehv import KINDS, TinyVAE, TinyVAEConfig
from lightx2v.models.wan.tiny import randomize_

pytest.importorskip("diffusers")

PROMPT = "a red fox runs through the snow"


def _load(path, **kw):
    return LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False, **kw)


@functools.lru_cache(maxsize=None)
def _weights(kind: str) -> dict:
    model = randomize_(TinyVAE(TinyVAEConfig(kind=kind)), seed=11)
    with torch.no_grad():
        model.decoder[22].bias.fill_(0.0 if kind == "lighttaehy1_5" else 0.5)  # pixels mostly inside the range
        model.decoder[22].weight.mul_(0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tae(tmp_path_factory):
    """kind -> a file of that release (fp16 .pth for madebyollin's, fp32 .safetensors for LightX2V's)."""
    root = tmp_path_factory.mktemp("tae-families")

    def write(kind: str):
        sd = _weights(kind)
        if kind.startswith("light"):
            save_file(sd, str(root / f"{kind}.safetensors"))
            return root / f"{kind}.safetensors"
        torch.save({k: v.half() for k, v in sd.items()}, root / f"{kind}.pth")
        return root / f"{kind}.pth"

    return {k: write(k) for k in ("taew2_1", "taew2_2", "lighttaew2_2", "taehv1_5", "lighttaehy1_5")}


def _check(pipe, kw, full, kind, generate=True):
    """The tiny VAE's generation against the full VAE's (`full`) and against the tiny VAE itself; with
    `generate` False only the pipeline's decode step on the full run's latents (the other release of a
    space: the same wiring, another latent map)."""
    tiny = pipe.model_config.tiny_vae
    assert tiny.kind == kind  # told from the tensors
    latents = full.latents
    if generate:
        r = pipe.generate(**kw, output_type="np")
        assert r.frames.shape == full.frames.shape and torch.equal(r.latents, full.latents)  # only the decode differs
    model = TinyVAE(tiny.config)
    sd = _weights(kind)
    model.load_state_dict(sd if kind.startswith("light") else {k: v.half().float() for k, v in sd.items()})
    video = pipe.pipeline.decode(latents)  # the pipeline's decode step: [1, 3, F, H, W] in [-1, 1]
    assert video.shape == (1, 3, *full.frames.shape[:3])
    assert (video - model.decode(latents)).abs().max() < 1e-5
    frames = (video[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1).numpy()
    if generate:
        assert np.abs(r.frames - frames).max() < 1e-5
    assert np.abs(frames - full.frames).max() > 0.05  # really another decoder


# ---------------------------------------------------------------- Wan2.2

TI2V = dict(prompt=PROMPT, height=32, width=64, num_frames=5, num_inference_steps=2, seed=3)  # latents [1, 48, 2, 2, 4]
A14B = dict(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2, seed=3)  # latents [1, 16, 2, 4, 6]


@pytest.fixture(scope="module")
def ti2v_full(wan22_ti2v_dirs):
    return _load(wan22_ti2v_dirs[1]).generate(**TI2V, output_type="np")


@pytest.mark.parametrize("kind", ["taew2_2", "lighttaew2_2"])
def test_wan22_ti2v_decodes_with_taew2_2(kind, tae, wan22_ti2v_dirs, ti2v_full):
    folder, full = wan22_ti2v_dirs[1], ti2v_full
    pipe = _load(folder, tiny_vae=tae[kind])
    assert pipe.pipeline.components["vae"] is not None  # TI2V may encode an image with the full VAE
    assert pipe.model_config.tiny_vae.config.latents_mean == pipe.model_config.arch.vae.latents_mean  # the folder's
    _check(pipe, TI2V, full, kind, generate=kind == "taew2_2")


def test_wan22_a14b_takes_the_wan21_tiny_vae(tae, wan22_t2v_dirs):
    folder = wan22_t2v_dirs[1]
    full = _load(folder).generate(**A14B, output_type="np")
    pipe = _load(folder, tiny_vae=tae["taew2_1"])
    assert pipe.pipeline.components["vae"] is None  # t2v: the full VAE is not loaded at all
    _check(pipe, A14B, full, "taew2_1")
    # the memory estimate counts the tiny VAE (weights, decode working set), not the VAE
    from lightx2v.runtime.memory import weight_bytes

    mc = pipe.model_config
    weights = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32))
    assert "vae" not in weights and weights["tiny_vae"] == sum(v.numel() for v in _weights("taew2_1").values()) * 4
    assert mc.spec.memory(mc, torch.float32).pixel_bytes == 2048 != mc.spec.memory(detect(folder), torch.float32).pixel_bytes


def test_wan22_wrong_latent_space_is_refused(tae, wan22_t2v_dirs, wan22_ti2v_dirs):
    with pytest.raises(CheckpointError, match=r"is not a Wan2.1 tiny VAE \(TAEHV taew2_1 / lighttaew2_1\): it is a "
                                              r"Wan2.2 TI2V-5B tiny VAE"):
        with_tiny_vae(detect(wan22_t2v_dirs[1]), tae["taew2_2"])
    with pytest.raises(CheckpointError, match=r"is not a Wan2.2 TI2V-5B tiny VAE \(TAEHV taew2_2 / lighttaew2_2\): "
                                              r"it is a Wan2.1 tiny VAE") as info:
        with_tiny_vae(detect(wan22_ti2v_dirs[1]), tae["taew2_1"])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- HunyuanVideo-1.5

HY = dict(prompt=PROMPT, height=64, width=64, num_frames=5, num_inference_steps=2, seed=3)  # latents [1, 32, 2, 4, 4]


@pytest.fixture(scope="module")
def hy_folder(tmp_path_factory):
    from tests.hunyuan15_fixtures import write_hunyuan15

    return write_hunyuan15(tmp_path_factory.mktemp("hy15-tae"), latent=32)[0]


@pytest.fixture(scope="module")
def hy_full(hy_folder):
    return _load(hy_folder).generate(**HY, output_type="np")


@pytest.mark.parametrize("kind", ["taehv1_5", "lighttaehy1_5"])
def test_hunyuan15_t2v_decodes_with_the_tiny_vae(kind, tae, hy_folder, hy_full):
    pipe = _load(hy_folder, tiny_vae=tae[kind])
    assert pipe.pipeline.components["vae"] is None  # t2v: the full VAE is not loaded at all
    assert pipe.model_config.tiny_vae.config.stats()[1] == (1 / 1.03682,) * 32  # the folder's scaling_factor
    _check(pipe, HY, hy_full, kind, generate=kind == "taehv1_5")
    meta = pipe.pipeline.output_metadata(SamplingParams(prompt=PROMPT), 3, (64, 64))
    assert meta["tiny_vae"] == {"path": str(tae[kind].resolve()), "kind": kind}


def test_hunyuan15_wrong_files_are_refused(tae, hy_folder):
    mc = detect(hy_folder)
    with pytest.raises(CheckpointError, match=r"is not a HunyuanVideo-1.5 tiny VAE \(TAEHV taehv1_5 / lighttaehy1_5\): "
                                              r"it is a Wan2.1 tiny VAE \(taew2_1 / lighttaew2_1: 16 latent channels"):
        _load(hy_folder, tiny_vae=tae["taew2_1"])
    small = dataclasses.replace(mc, arch=dataclasses.replace(mc.arch, vae=dataclasses.replace(mc.arch.vae,
                                                                                          latent_channels=4)))
    with pytest.raises(CheckpointError, match="this HunyuanVideo-1.5 model's VAE has 4 latent channels; the tiny "
                                              r"VAEs for its latents \(taehv1_5 / lighttaehy1_5\) take 32"):
        with_tiny_vae(small, tae["taehv1_5"])


def test_hunyuan15_memory_and_encoder_offload(tae, hy_folder):
    from lightx2v.runtime.memory import weight_bytes

    plain = detect(hy_folder)
    mc = with_tiny_vae(plain, tae["taehv1_5"])
    engine = EngineConfig(device="cpu", dtype=torch.float32)
    weights = weight_bytes(mc, engine)
    n = sum(v.numel() for v in _weights("taehv1_5").values())
    assert "vae" not in weights and weights["tiny_vae"] == n * 4  # fp32, as the VAE
    prof, prof_full = mc.spec.memory(mc, torch.float32), plain.spec.memory(plain, torch.float32)
    assert (prof.pixel_bytes, prof.vae_tile, prof.vae_whole_clip) == (512, None, False)  # untiled, chunked
    assert prof_full.vae_whole_clip and prof_full.vae_tile == 256
    # offload_encoders: the tiny VAE lives in host memory and is placed for the decode only
    pipe = _load(hy_folder, tiny_vae=tae["taehv1_5"], offload_encoders=True)
    off = pipe.pipeline.encoder_offload
    assert sorted(off.models) == ["text_encoder", "text_encoder_2", "tiny_vae"]
    events = []
    activate = off.activate
    off.activate = lambda name: (events.append(name), activate(name))[1]
    r = pipe.generate(**HY, output_type="pt")
    assert events[-1] == "tiny_vae" and off.resident is None
    ref = TinyVAE(mc.tiny_vae.config)
    ref.load_state_dict({k: v.half().float() for k, v in _weights("taehv1_5").items()})
    expect = (ref.decode(r.latents)[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1)  # [F, H, W, 3]
    assert r.frames.shape == expect.shape and (r.frames - expect).abs().max() < 1e-5


def test_cli_kind_choices_are_the_modules():
    from lightx2v.cli.main import build_parser

    gen = build_parser()._subparsers._group_actions[0].choices["generate"]
    action = next(a for a in gen._actions if "--tiny-vae-kind" in a.option_strings)
    assert tuple(action.choices) == KINDS
