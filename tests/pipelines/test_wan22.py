"""Wan2.2 pipelines vs diffusers on tiny random weights (CPU, fp32, the same initial latents):

    T2V-A14B        WanPipeline(transformer, transformer_2, boundary_ratio), distinct guidance_scale(_2)
    I2V-A14B        WanImageToVideoPipeline(transformer_2, boundary_ratio, no image encoder)
    TI2V-5B text    WanPipeline(expand_timesteps=True, the Wan2.2 VAE)
    TI2V-5B image   WanImageToVideoPipeline(expand_timesteps=True); an image of the video's exact size,
                    where diffusers' plain resize and the official size rule agree (wan22_image.py)

and the expert switch (by timestep, the official 40-step splits; by step index for distilled presets),
and the request rules. The pipelines are built from the diffusers modules renamed into ours, under
a stand-in "wan2.2" family spec (its geometry is Wan2.1's rule, which reads the VAE's strides).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from lightx2v.config import EngineConfig, ModelConfig, SamplingDefaults, SamplingParams
from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.state_dict import load_into, rename
from lightx2v.pipelines.base import Guidance, denoise
from lightx2v.pipelines.wan22 import Wan22Pipeline, expert_rule
from lightx2v.pipelines.wan22_image import FirstFrame, best_output_size, ti2v_frame_size, ti2v_image_tensor
from lightx2v.schedulers import make_scheduler
from tests.conftest import TEXT_DIM, _tiny_components

diffusers = pytest.importorskip("diffusers")

H, W, FRAMES = 32, 48, 5        # A14B: Wan2.1 VAE, 8x -> latents [1, 16, 2, 4, 6]
TH, TW = 64, 96                 # TI2V: Wan2.2 VAE, 16x -> latents [1, 48, 2, 4, 6]
STEPS, SHIFT, BOUNDARY = 4, 3.0, 0.875   # diffusers' UniPC at shift 3: t = 1000, 900, 750, 500 -> 2 high, 2 low
G_HIGH, G_LOW = 5.0, 3.0
PROMPT, NEG = "a red fox runs through the snow", "blurry, static"
DIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, text_dim=TEXT_DIM, freq_dim=32,
           ffn_dim=128, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
VAE22 = dict(base_dim=16, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
             temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
             patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)


# ---------------------------------------------------------------- the stand-ins for the family's side


@dataclass(frozen=True)
class Arch:
    """The contract's Wan22Arch (the family helper's ModelConfig.arch), as this pipeline reads it."""

    dit: Any
    dit_2: Optional[Any]
    vae: Any
    text_encoder: Any
    boundary: Optional[float] = None
    switch_step: Optional[int] = None


@pytest.fixture(scope="module", autouse=True)
def wan22_family():
    """A "wan2.2" spec for ModelConfig.spec (geometry, pipeline) until the family is registered."""
    from lightx2v.models import registry
    from lightx2v.models.wan.spec import WAN21

    registry.families()
    if "wan2.2" in registry._FAMILIES:
        yield registry._FAMILIES["wan2.2"]
        return
    spec = dataclasses.replace(WAN21, name="wan2.2", title="Wan2.2", tasks=("t2v", "i2v", "ti2v"), presets=(),
                               pipeline=lambda: Wan22Pipeline,
                               components=tuple(c for c in WAN21.components if c.name != "clip"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._FAMILIES, "wan2.2", spec)
        yield spec


def _randomized(module, seed: int):
    from lightx2v.models.wan.tiny import randomize_

    return randomize_(module, seed=seed).eval()


def _convert(model_cls, config, sd, key_map, keep=()):
    with torch.device("meta"):
        ours = model_cls(config)
    return load_into(ours, rename(sd, key_map), keep_fp32=keep).eval()


def _ours_dit(d):
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    return _convert(WanModel, WanDiTConfig.from_diffusers(d.config), d.state_dict(), WanModel.key_from_diffusers,
                    WanModel._keep_in_fp32)


def _ours_vae(v):
    from lightx2v.models.wan.vae import WanVAE, WanVAEConfig
    from lightx2v.models.wan.vae22 import Wan22VAE, Wan22VAEConfig

    cls, cfg_cls = (Wan22VAE, Wan22VAEConfig) if v.config.is_residual else (WanVAE, WanVAEConfig)
    cfg = cfg_cls.from_diffusers(v.config)
    return _convert(cls, cfg, v.state_dict(), cfg.key_from_diffusers)


@dataclass
class Parts:
    root: Path
    tok_dir: Path
    tokenizer: Any
    t5: Any
    vae21: Any
    vae22: Any
    sched_config: dict
    dits: dict


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Parts:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from lightx2v.models.wan.tokenizer import build_tiny_tokenizer
    from lightx2v.models.wan.vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

    root = tmp_path_factory.mktemp("wan22-pipe")
    tok_dir = build_tiny_tokenizer(root / "_tok")
    tokenizer, t5, _, vae21, sched = _tiny_components(tok_dir)
    vae22 = _randomized(AutoencoderKLWan(**VAE22, latents_mean=list(WAN22_LATENTS_MEAN),
                                         latents_std=list(WAN22_LATENTS_STD)), 40)
    channels = {"t2v": (16, 16), "i2v": (36, 16), "ti2v": (48, 48)}
    dits = {}
    for i, (task, (cin, cout)) in enumerate(channels.items()):
        for j, name in enumerate(("high", "low") if task != "ti2v" else ("high",)):
            dits[task, name] = _randomized(WanTransformer3DModel(**DIT, in_channels=cin, out_channels=cout),
                                           50 + 2 * i + j)
    sched_config = {"_class_name": "UniPCMultistepScheduler",
                    **{k: v for k, v in sched.config.items() if not k.startswith("_")}}
    return Parts(root, tok_dir, tokenizer, t5, vae21, vae22, json.loads(json.dumps(sched_config)), dits)


def _model_config(parts: Parts, task: str, *, dit, dit_2=None, vae, boundary=BOUNDARY, switch_step=None,
                  **defaults) -> ModelConfig:
    from lightx2v.models.wan.t5 import UMT5Config

    d = dict(num_inference_steps=STEPS, guidance_scale=G_HIGH, guidance_scale_2=G_LOW if dit_2 is not None else None,
             shift=SHIFT, solver="unipc", convention="diffusers", scheduler_config=parts.sched_config,
             negative_prompt=NEG, fps=16 if dit_2 is not None else 24)
    d.update(defaults)
    arch = Arch(dit=dit, dit_2=dit_2, vae=vae, text_encoder=UMT5Config.from_transformers(parts.t5.config.to_dict()),
                boundary=boundary if dit_2 is not None else None, switch_step=switch_step)
    return ModelConfig(family="wan2.2", task=task, layout="diffusers", root=parts.root, files={}, arch=arch,
                       defaults=SamplingDefaults(**d))


def _pipeline(parts: Parts, task: str, cfg_mode: str = "sequential") -> Wan22Pipeline:
    from lightx2v.models.wan.t5 import UMT5Encoder, t5_key_from_transformers
    from lightx2v.models.wan.tokenizer import WanTokenizer

    dit = _ours_dit(parts.dits[task, "high"])
    dit_2 = _ours_dit(parts.dits[task, "low"]) if task != "ti2v" else None
    vae = _ours_vae(parts.vae22 if task == "ti2v" else parts.vae21)
    mc = _model_config(parts, task, dit=dit.config, dit_2=None if dit_2 is None else dit_2.config, vae=vae.config)
    t5 = _convert(UMT5Encoder, mc.arch.text_encoder, parts.t5.state_dict(), t5_key_from_transformers)
    return Wan22Pipeline(mc, EngineConfig(device="cpu", dtype=torch.float32, cfg_mode=cfg_mode), dit=dit, dit_2=dit_2,
                         text_encoder=t5, tokenizer=WanTokenizer.from_folder(parts.tok_dir, text_len=512), vae=vae,
                         progress=False)


def _image(w: int, h: int, seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)  # smooth, like a photo


def _latents(channels: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(1, channels, (FRAMES - 1) // 4 + 1, h, w, generator=torch.Generator().manual_seed(seed))


class CallCounter:
    """Forward calls per module (forward pre-hooks)."""

    def __init__(self, **modules) -> None:
        self.counts: Counter = Counter()
        self.handles = [m.register_forward_pre_hook(lambda *_, n=name: self.counts.update([n]))
                        for name, m in modules.items()]

    def remove(self) -> dict:
        for h in self.handles:
            h.remove()
        return dict(self.counts)


def _reference(parts: Parts, task: str, image=None, **kw) -> np.ndarray:
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    sched = UniPCMultistepScheduler.from_config(parts.sched_config)
    common = dict(tokenizer=parts.tokenizer, text_encoder=parts.t5, scheduler=sched)
    if task == "ti2v":
        cls = WanPipeline if image is None else WanImageToVideoPipeline
        pipe = cls(**common, vae=parts.vae22, transformer=parts.dits["ti2v", "high"], expand_timesteps=True)
    else:
        cls = WanPipeline if task == "t2v" else WanImageToVideoPipeline
        pipe = cls(**common, vae=parts.vae21, transformer=parts.dits[task, "high"],
                   transformer_2=parts.dits[task, "low"], boundary_ratio=BOUNDARY)
    pipe.set_progress_bar_config(disable=True)
    if image is not None:
        kw["image"] = image
    out = pipe(prompt=PROMPT, negative_prompt=NEG, num_frames=FRAMES, num_inference_steps=STEPS, output_type="np", **kw)
    return np.asarray(out.frames[0], dtype=np.float32)


def _ours(pipe: Wan22Pipeline, **kw):
    kw.setdefault("output_type", "np")
    return pipe(SamplingParams(prompt=PROMPT, negative_prompt=NEG, num_frames=FRAMES, num_inference_steps=STEPS, **kw))


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max())
    print(f"{what}: max |ours - diffusers| = {err:.2e}")
    assert err <= 1e-3, f"{what}: frames differ by {err}"
    assert ref.std() > 0.01  # a real picture, not a constant
    return err


# ---------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_a14b_matches_diffusers_with_a_scale_per_expert(parts, task):
    image = _image(W, H) if task == "i2v" else None
    latents = _latents(16, H // 8, W // 8, seed=11)
    hooks = CallCounter(high=parts.dits[task, "high"], low=parts.dits[task, "low"])
    ref = _reference(parts, task, image=image, height=H, width=W, guidance_scale=G_HIGH, guidance_scale_2=G_LOW,
                     latents=latents.clone())
    assert hooks.remove() == {"high": 4, "low": 4}  # 2 steps each, cond + uncond

    pipe = _pipeline(parts, task)
    hooks = CallCounter(high=pipe.dit, low=pipe.dit_2)
    result = _ours(pipe, image=image, height=H, width=W, guidance_scale=G_HIGH, guidance_scale_2=G_LOW,
                   latents=latents.clone())
    assert hooks.remove() == {"high": 4, "low": 4}
    assert result.stats == {"model_calls": 8, "model_samples": 8}
    _assert_close(result.frames, ref, f"{task.upper()}-A14B")
    # the low-noise scale is used: the same run with one scale for both experts differs
    same = _ours(pipe, image=image, height=H, width=W, guidance_scale=G_HIGH, latents=latents.clone(),
                 output_type="latent")
    assert not torch.allclose(same.latents, result.latents, atol=1e-3)


def test_ti2v_text_to_video_matches_diffusers(parts):
    latents = _latents(48, TH // 16, TW // 16, seed=12)
    ref = _reference(parts, "ti2v", height=TH, width=TW, guidance_scale=G_HIGH, latents=latents.clone())
    result = _ours(_pipeline(parts, "ti2v"), height=TH, width=TW, guidance_scale=G_HIGH, latents=latents.clone())
    assert result.frames.shape == (FRAMES, TH, TW, 3)
    _assert_close(result.frames, ref, "TI2V-5B text")


@pytest.fixture(scope="module")
def ti2v_image_run(parts):
    image = _image(TW, TH)  # the video's exact size: diffusers' plain resize == the official size rule + crop
    latents = _latents(48, TH // 16, TW // 16, seed=13)
    pipe = _pipeline(parts, "ti2v")
    return pipe, image, latents, _ours(pipe, image=image, height=TH, width=TW, guidance_scale=G_HIGH,
                                       latents=latents.clone())


def test_ti2v_image_to_video_matches_diffusers(parts, ti2v_image_run):
    pipe, image, latents, result = ti2v_image_run
    ref = _reference(parts, "ti2v", image=image, height=TH, width=TW, guidance_scale=G_HIGH, latents=latents.clone())
    _assert_close(result.frames, ref, "TI2V-5B image")
    # frame 0 of the final latents is the image's latent, re-imposed after every step
    z = pipe.vae.encode(ti2v_image_tensor(image, TH, TW, "area")[None, :, None])
    assert torch.equal(result.latents[:, :, :1], z)


def test_ti2v_image_batched_cfg_matches_sequential(parts, ti2v_image_run):
    _, image, latents, result = ti2v_image_run
    batched = _pipeline(parts, "ti2v", cfg_mode="batched")
    out = _ours(batched, image=image, height=TH, width=TW, guidance_scale=G_HIGH, latents=latents.clone(),
                output_type="latent")
    assert out.stats == {"model_calls": STEPS, "model_samples": 2 * STEPS}
    torch.testing.assert_close(out.latents, result.latents, rtol=1e-5, atol=1e-5)


def test_after_step_hook_sees_every_step_before_the_callback():
    """The loop's hook: applied after each scheduler step, its result is what the callback and the next step get."""
    seen = []

    class Sched:
        timesteps = torch.tensor([900.0, 500.0])

        def step(self, v, x):
            return x + 1

    fix = FirstFrame(torch.full((1, 2, 1, 1, 1), -5.0))
    out = denoise(lambda x, t, c, ctx: x, Sched(), torch.zeros(1, 2, 3, 1, 1), None, None, Guidance(),
                  after_step=lambda i, x: fix(x), callback=lambda info: seen.append(info.latents[0, 0, :, 0, 0].tolist()),
                  progress=False)
    assert seen == [[-5.0, 1.0, 1.0], [-5.0, 2.0, 2.0]]
    assert out[0, 0, :, 0, 0].tolist() == [-5.0, 2.0, 2.0]


# ---------------------------------------------------------------- the expert switch


def _split(sched, rule) -> tuple[Counter, list[float]]:
    calls, high_t = Counter(), []

    def model_fn(x, t, cond, ctx):
        calls[ctx.expert] += 1
        if ctx.expert == "high":
            high_t.append(ctx.timestep)
        return torch.zeros_like(x)

    denoise(model_fn, sched, torch.zeros(1, 4), None, None, Guidance(), expert_for=rule, progress=False)
    return calls, high_t


@pytest.mark.parametrize("shift, boundary, high, low, last_high", [
    (12.0, 0.875, 26, 14, 877.0),   # T2V-A14B: 40 steps (facts: the official split; t 877 high, 865 low)
    (5.0, 0.900, 15, 25, 902.0),    # I2V-A14B
])
def test_official_split_by_timestep(shift, boundary, high, low, last_high):
    sched = make_scheduler("unipc")
    sched.set_timesteps(40, shift=shift)
    calls, high_t = _split(sched, expert_rule(boundary, None, sched.num_train_timesteps))
    assert calls == {"high": high, "low": low}
    assert high_t[-1] == last_high


def test_boundary_is_inclusive():
    rule = expert_rule(0.9, None, 1000)
    assert rule(5, 900.0) == "high" and rule(6, 899.0) == "low"


@pytest.mark.parametrize("switch_step, high", [(2, 2), (1, 1)])
def test_distilled_split_by_step_index(switch_step, high):
    """LightX2V's 4-step experts switch by step index (boundary_step_index 2); the index wins over a boundary
    (t = 1000, 937.5, 833.3, 625: 0.875 alone would give 2 high)."""
    sched = make_scheduler("distill")
    sched.set_timesteps(4, shift=5.0)
    calls, _ = _split(sched, expert_rule(0.875, switch_step, 1000))
    assert calls == {"high": high, "low": 4 - high}


def test_two_experts_need_a_rule():
    with pytest.raises(CheckpointError, match="boundary"):
        expert_rule(None, None)


# ---------------------------------------------------------------- requests (no weights read)


@pytest.fixture(scope="module")
def configs(parts):
    from lightx2v.models.wan.dit import WanDiTConfig
    from lightx2v.models.wan.vae import WanVAEConfig
    from lightx2v.models.wan.vae22 import Wan22VAEConfig

    dit = {t: WanDiTConfig.from_diffusers(parts.dits[t, "high"].config) for t in ("t2v", "i2v", "ti2v")}
    v21, v22 = WanVAEConfig.from_diffusers(parts.vae21.config), Wan22VAEConfig.from_diffusers(parts.vae22.config)
    return {t: _model_config(parts, t, dit=dit[t], dit_2=None if t == "ti2v" else dit[t],
                             vae=v22 if t == "ti2v" else v21) for t in dit}


def _prepare(mc, **kw):
    from lightx2v.pipelines.request import prepare_request

    kw.setdefault("height", TH if mc.task == "ti2v" else H)
    kw.setdefault("width", TW if mc.task == "ti2v" else W)
    return prepare_request(mc, SamplingParams(prompt=PROMPT, num_frames=FRAMES, **kw))


def test_guidance_scale_defaults(configs):
    mc = configs["t2v"]
    assert (_prepare(mc).guidance_scale, _prepare(mc).guidance_scale_2) == (G_HIGH, G_LOW)   # the checkpoint's pair
    p = _prepare(mc, guidance_scale=7.0)                      # one scale given: both experts (as diffusers)
    assert (p.guidance_scale, p.guidance_scale_2) == (7.0, 7.0)
    p = _prepare(mc, guidance_scale_2=2.0)                    # only the low one: the default high one
    assert (p.guidance_scale, p.guidance_scale_2) == (G_HIGH, 2.0)
    p = _prepare(configs["ti2v"], guidance_scale=4.0, guidance_scale_2=4.0)
    assert p.guidance_scale_2 == 4.0


def test_guidance_per_expert_and_cfg_when_either_scale_is_not_one(parts):
    pipe = _pipeline(parts, "t2v")
    g = pipe.guidance(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=3.0))
    assert dict(g.scales) == {"high": 1.0, "low": 3.0}
    assert pipe.uses_cfg(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=3.0))
    assert not pipe.uses_cfg(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=1.0))


@pytest.mark.parametrize("task, kw, field, match", [
    ("t2v", {"image": "IMG"}, "image", "text-to-video checkpoint"),
    ("i2v", {}, "image", "give an image"),
    ("i2v", {"image": "IMG", "last_image": "IMG"}, "last_image", "not a Wan2.2 task"),
    ("ti2v", {"image": "IMG", "last_image": "IMG"}, "last_image", "not a Wan2.2 task"),
    ("ti2v", {"guidance_scale": 5.0, "guidance_scale_2": 3.0}, "guidance_scale_2", "TI2V-5B has one expert"),
    ("ti2v", {"height": 48}, "height", "multiple of 32"),
    ("t2v", {"height": 40}, "height", "multiple of 16"),
    ("ti2v", {"image": "SMALL"}, None, "smaller than the"),
])
def test_request_refusals(configs, task, kw, field, match):
    images = {"IMG": _image(TW, TH), "SMALL": _image(32, 32)}
    kw = {k: images.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(InputError, match=match) as exc:
        _prepare(configs[task], **kw)
    assert "\n" not in str(exc.value)
    if field is not None:
        assert exc.value.field == field


def test_a14b_takes_a_second_scale_and_ti2v_an_optional_image(configs):
    _prepare(configs["t2v"], guidance_scale=4.0, guidance_scale_2=3.0)
    _prepare(configs["i2v"], image=_image(W, H), guidance_scale_2=3.0)
    _prepare(configs["ti2v"])
    _prepare(configs["ti2v"], image=_image(TW, TH))


def test_experts_are_checked_against_the_task(parts, configs):
    pipe = _pipeline(parts, "ti2v")
    with pytest.raises(CheckpointError, match="two experts"):
        Wan22Pipeline(configs["t2v"], pipe.engine, dit=pipe.dit, text_encoder=pipe.text_encoder,
                      tokenizer=pipe.tokenizer, vae=pipe.vae)


# ---------------------------------------------------------------- TI2V sizes from the image


@pytest.mark.parametrize("image_wh, out_wh", [
    ((1280, 720), (1248, 704)), ((1280, 704), (1280, 704)), ((720, 1280), (704, 1248)), ((1024, 1024), (960, 928)),
])
def test_best_output_size_official_examples(image_wh, out_wh):
    assert best_output_size(*image_wh, 32, 32, 704 * 1280) == out_wh
    assert ti2v_frame_size(image_wh, 704, 1280, "area") == out_wh[::-1]


def test_ti2v_image_resize_crop_and_pad():
    img = _image(200, 100)
    x = ti2v_image_tensor(img, 64, 96, "crop")
    assert x.shape == (3, 64, 96) and -1 <= x.min() and x.max() <= 1
    padded = ti2v_image_tensor(img, 96, 96, "pad")
    assert padded.shape == (3, 96, 96) and (padded[:, 0] == -1).all()  # black bars above and below
    assert ti2v_frame_size((200, 100), 64, 96, "crop") == (64, 96)
    with pytest.raises(InputError, match="does not fit"):
        best_output_size(4000, 10, 32, 32, 64 * 96)
