"""Wan2.2 pipelines vs diffusers on the tiny folders of tests/wan22_fixtures.py (CPU, fp32, the same
initial latents), each loaded through `LightX2V.from_pretrained` in both layouts:

    T2V-A14B        WanPipeline(transformer, transformer_2, boundary_ratio), distinct guidance_scale(_2)
    I2V-A14B        WanImageToVideoPipeline(transformer_2, boundary_ratio, no image encoder)
    TI2V-5B text    WanPipeline(expand_timesteps=True, the Wan2.2 VAE)
    TI2V-5B image   WanImageToVideoPipeline(expand_timesteps=True) on the same folder; an image of the
                    video's exact size, where diffusers' plain resize and the official size rule agree
                    (wan22_image.py)

The official layout samples with the diffusers folder's scheduler here (as tests/pipelines/test_wan_t2v.py),
so that both layouts can be compared with the oracle and with each other. Then the expert switch (by
timestep: the official 40-step splits; by step index for distilled presets), the request rules (no
weights read) and the TI2V size rule.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightx2v import LightX2V
from lightx2v.config import SamplingParams
from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.detect import detect
from lightx2v.pipelines.base import Guidance, denoise
from lightx2v.pipelines.wan22 import Wan22Pipeline
from lightx2v.pipelines.wan22_image import FirstFrame, best_output_size, ti2v_frame_size, ti2v_image_tensor
from lightx2v.schedulers import make_scheduler

diffusers = pytest.importorskip("diffusers")

H, W, FRAMES = 32, 48, 5        # A14B: Wan2.1 VAE, 8x -> latents [1, 16, 2, 4, 6]
TH, TW = 64, 96                 # TI2V: Wan2.2 VAE, 16x -> latents [1, 48, 2, 4, 6]
# diffusers' UniPC at the folders' flow_shift (A14B 3.0): t = 1000, 900, 750, 500 -> 2 high, 2 low at
# boundary 0.875 (T2V) and 0.9 (I2V: 900 >= 900, the inclusive rule)
STEPS = 4
G_HIGH, G_LOW = 5.0, 3.0
PROMPT, NEG = "a red fox runs through the snow", "blurry, static"
DIRS = {"t2v": "wan22_t2v_dirs", "i2v": "wan22_i2v_dirs", "ti2v": "wan22_ti2v_dirs"}


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


def _reference(diffusers_dir, task: str, image=None, t5_bf16: bool = False, **kw):
    """(frames, {expert: forward calls}) of diffusers' own pipeline on the diffusers folder; `t5_bf16`:
    with the text encoder's weights rounded to bfloat16, as the official layout's
    models_t5_umt5-xxl-enc-bf16.pth holds them (tests/wan22_fixtures.py writes it so)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanPipeline if image is None else WanImageToVideoPipeline
    pipe = cls.from_pretrained(diffusers_dir, dtype=torch.float32)
    if t5_bf16:
        with torch.no_grad():
            for t in pipe.text_encoder.state_dict().values():
                t.copy_(t.to(torch.bfloat16))
    assert pipe.config.expand_timesteps == (task == "ti2v")
    pipe.set_progress_bar_config(disable=True)
    experts = {"high": pipe.transformer} | ({} if pipe.transformer_2 is None else {"low": pipe.transformer_2})
    hooks = CallCounter(**experts)
    if image is not None:
        kw["image"] = image
    out = pipe(prompt=PROMPT, negative_prompt=NEG, num_frames=FRAMES, num_inference_steps=STEPS, output_type="np", **kw)
    return np.asarray(out.frames[0], dtype=np.float32), hooks.remove()


def _load(folder, reference_defaults=None, **kw) -> LightX2V:
    """Ours on `folder`; the official layout takes the diffusers folder's sampling defaults
    (its scheduler_config.json, its shift), so both layouts sample as the oracle does."""
    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)
    if reference_defaults is not None:
        pipe.pipeline.model_config = dataclasses.replace(pipe.model_config, defaults=reference_defaults)
    return pipe


def _both_layouts(dirs, **kw) -> dict[str, LightX2V]:
    diffusers_dir, official_dir = dirs
    ours = {"diffusers": _load(diffusers_dir, **kw)}
    ours["official"] = _load(official_dir, reference_defaults=ours["diffusers"].model_config.defaults, **kw)
    assert {k: p.model_config.layout for k, p in ours.items()} == {"diffusers": "diffusers", "official": "official"}
    return ours


def _ours(pipe: LightX2V, **kw):
    kw.setdefault("output_type", "np")
    return pipe.generate(prompt=PROMPT, negative_prompt=NEG, num_frames=FRAMES, num_inference_steps=STEPS, **kw)


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str, tol: float = 1e-3) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max())
    print(f"{what}: max |ours - reference| = {err:.2e}")
    assert err <= tol, f"{what}: frames differ by {err}"
    assert ref.std() > 0.01  # a real picture, not a constant
    return err


def _same_weights(ours: dict) -> None:
    """Both layouts load the same models: every tensor equal (the official T5 file is bfloat16)."""
    a, b = ours["diffusers"].pipeline.components, ours["official"].pipeline.components
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None:
            assert b[name] is None
            continue
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            x = sa[k].to(torch.bfloat16).float() if name == "text_encoder" else sa[k]
            assert torch.equal(x, sb[k]), f"{name}.{k}"


def _compare(ours: dict, refs: dict, what: str, **kw) -> dict:
    """Each layout's run vs diffusers on the same weights (refs: layout -> frames); returns the results."""
    _same_weights(ours)
    results = {layout: _ours(pipe, **kw) for layout, pipe in ours.items()}
    for layout, r in results.items():
        _assert_close(r.frames, refs[layout], f"{what} ({layout} layout) vs diffusers")
    return results


def _references(diffusers_dir, task: str, **kw) -> tuple[dict, dict]:
    """diffusers' frames for each layout's weights, and its expert calls."""
    ref, calls = _reference(diffusers_dir, task, **kw)
    return {"diffusers": ref, "official": _reference(diffusers_dir, task, t5_bf16=True, **kw)[0]}, calls


# ---------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_a14b_matches_diffusers_with_a_scale_per_expert(request, task):
    dirs = request.getfixturevalue(DIRS[task])
    image = _image(W, H) if task == "i2v" else None
    latents = _latents(16, H // 8, W // 8, seed=11)
    kw = dict(image=image, height=H, width=W, guidance_scale=G_HIGH, guidance_scale_2=G_LOW)
    refs, calls = _references(dirs[0], task, latents=latents.clone(), **kw)
    assert calls == {"high": 4, "low": 4}  # 2 steps each, cond + uncond

    ours = _both_layouts(dirs)
    pipe = ours["diffusers"].pipeline
    assert isinstance(pipe, Wan22Pipeline) and pipe.dit_2 is not None
    hooks = CallCounter(high=pipe.dit, low=pipe.dit_2)
    results = _compare(ours, refs, f"{task.upper()}-A14B", latents=latents, **kw)
    assert hooks.remove() == {"high": 4, "low": 4}
    assert results["diffusers"].stats == {"model_calls": 8, "model_samples": 8}
    # the low-noise scale is used: the same run with one scale for both experts differs
    same = _ours(ours["diffusers"], latents=latents, output_type="latent", **{**kw, "guidance_scale_2": None})
    assert not torch.allclose(same.latents, results["diffusers"].latents, atol=1e-3)


def test_ti2v_text_to_video_matches_diffusers(wan22_ti2v_dirs):
    latents = _latents(48, TH // 16, TW // 16, seed=12)
    kw = dict(height=TH, width=TW, guidance_scale=G_HIGH)
    refs, _ = _references(wan22_ti2v_dirs[0], "ti2v", latents=latents.clone(), **kw)
    results = _compare(_both_layouts(wan22_ti2v_dirs), refs, "TI2V-5B text", latents=latents, **kw)
    assert results["diffusers"].frames.shape == (FRAMES, TH, TW, 3)


@pytest.fixture(scope="module")
def ti2v_image_run(wan22_ti2v_dirs):
    image = _image(TW, TH)  # the video's exact size: diffusers' plain resize == the official size rule + crop
    latents = _latents(48, TH // 16, TW // 16, seed=13)
    kw = dict(image=image, height=TH, width=TW, guidance_scale=G_HIGH)
    refs, _ = _references(wan22_ti2v_dirs[0], "ti2v", latents=latents.clone(), **kw)
    ours = _both_layouts(wan22_ti2v_dirs)
    return ours, image, latents, _compare(ours, refs, "TI2V-5B image", latents=latents, **kw)


def test_ti2v_image_to_video_matches_diffusers(ti2v_image_run):
    ours, image, _, results = ti2v_image_run
    # frame 0 of the final latents is the image's latent, re-imposed after every step
    z = ours["diffusers"].pipeline.vae.encode(ti2v_image_tensor(image, TH, TW, "area")[None, :, None])
    assert torch.equal(results["diffusers"].latents[:, :, :1], z)


def test_ti2v_image_batched_cfg_matches_sequential(wan22_ti2v_dirs, ti2v_image_run):
    _, image, latents, results = ti2v_image_run
    batched = _load(wan22_ti2v_dirs[0], cfg_mode="batched")
    out = _ours(batched, image=image, height=TH, width=TW, guidance_scale=G_HIGH, latents=latents,
                output_type="latent")
    assert out.stats == {"model_calls": STEPS, "model_samples": 2 * STEPS}
    torch.testing.assert_close(out.latents, results["diffusers"].latents, rtol=1e-5, atol=1e-5)


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


@pytest.fixture(scope="module")
def configs(wan22_t2v_dirs, wan22_i2v_dirs, wan22_ti2v_dirs):
    """The official layouts' ModelConfigs (official defaults: T2V guidance 4.0 high / 3.0 low)."""
    return {t: detect(d[1]) for t, d in (("t2v", wan22_t2v_dirs), ("i2v", wan22_i2v_dirs), ("ti2v", wan22_ti2v_dirs))}


def _rule(configs, boundary=None, switch_step=None):
    """The pipeline's expert_for for a checkpoint with this boundary / switch step."""
    mc = configs["t2v"]
    arch = dataclasses.replace(mc.arch, boundary=boundary, switch_step=switch_step)
    return Wan22Pipeline.expert_rule(SimpleNamespace(dit_2=object(), model_config=dataclasses.replace(mc, arch=arch)),
                                     make_scheduler("unipc"))


@pytest.mark.parametrize("shift, boundary, high, low, last_high", [
    (12.0, 0.875, 26, 14, 877.0),   # T2V-A14B: 40 steps (facts: the official split; t 877 high, 865 low)
    (5.0, 0.900, 15, 25, 902.0),    # I2V-A14B
])
def test_official_split_by_timestep(configs, shift, boundary, high, low, last_high):
    sched = make_scheduler("unipc")
    sched.set_timesteps(40, shift=shift)
    calls, high_t = _split(sched, _rule(configs, boundary=boundary))
    assert calls == {"high": high, "low": low}
    assert high_t[-1] == last_high


def test_boundary_is_inclusive(configs):
    rule = _rule(configs, boundary=0.9)
    assert rule(5, 900.0) == "high" and rule(6, 899.0) == "low"


@pytest.mark.parametrize("switch_step, high", [(2, 2), (1, 1)])
def test_distilled_split_by_step_index(configs, switch_step, high):
    """LightX2V's 4-step experts switch by step index (boundary_step_index 2); the index wins over a boundary
    (t = 1000, 937.5, 833.3, 625: 0.875 alone would give 2 high)."""
    sched = make_scheduler("distill")
    sched.set_timesteps(4, shift=5.0)
    calls, _ = _split(sched, _rule(configs, boundary=0.875, switch_step=switch_step))
    assert calls == {"high": high, "low": 4 - high}


def test_distilled_preset_runs_2_high_2_low_without_cfg(wan22_t2v_dirs):
    pipe = _load(wan22_t2v_dirs[1], preset="wan2.2-t2v-a14b-distill")
    assert pipe.model_config.arch.switch_step == 2
    hooks = CallCounter(high=pipe.pipeline.dit, low=pipe.pipeline.dit_2)
    seen = []
    out = pipe.generate(prompt=PROMPT, height=H, width=W, num_frames=FRAMES, seed=0, output_type="latent",
                        callback=lambda info: seen.append(info.timestep))
    assert hooks.remove() == {"high": 2, "low": 2}  # guidance 1 for both experts: one call a step
    assert out.stats == {"model_calls": 4, "model_samples": 4}
    assert [round(t, 1) for t in seen] == [1000.0, 937.5, 833.3, 625.0]
    with pytest.warns(UserWarning, match="guidance_scale_2 3 with a step-distilled model"):
        pipe.generate(prompt=PROMPT, height=H, width=W, num_frames=FRAMES, seed=0, output_type="latent",
                      guidance_scale=1.0, guidance_scale_2=3.0)


def test_one_dit_has_no_rule(wan22_ti2v_dirs):
    assert _load(wan22_ti2v_dirs[0]).pipeline.expert_rule(make_scheduler("unipc")) is None


# ---------------------------------------------------------------- requests (no weights read)


def _prepare(mc, **kw):
    from lightx2v.pipelines.request import prepare_request

    kw.setdefault("height", TH if mc.task == "ti2v" else H)
    kw.setdefault("width", TW if mc.task == "ti2v" else W)
    return prepare_request(mc, SamplingParams(prompt=PROMPT, num_frames=FRAMES, **kw))


def test_guidance_scale_defaults(configs):
    mc = configs["t2v"]
    p = _prepare(mc)                                          # the checkpoint's pair (official (low, high) = (3, 4))
    assert (p.guidance_scale, p.guidance_scale_2) == (4.0, 3.0)
    p = _prepare(mc, guidance_scale=7.0)                      # one scale given: both experts (as diffusers)
    assert (p.guidance_scale, p.guidance_scale_2) == (7.0, 7.0)
    p = _prepare(mc, guidance_scale_2=2.0)                    # only the low one: the default high one
    assert (p.guidance_scale, p.guidance_scale_2) == (4.0, 2.0)
    p = _prepare(configs["ti2v"], guidance_scale=4.0, guidance_scale_2=4.0)
    assert p.guidance_scale_2 == 4.0


def test_guidance_per_expert_and_cfg_when_either_scale_is_not_one(wan22_t2v_dirs):
    pipe = _load(wan22_t2v_dirs[0]).pipeline
    g = pipe.guidance(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=3.0))
    assert dict(g.scales) == {"high": 1.0, "low": 3.0}
    assert pipe.uses_cfg(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=3.0))
    assert not pipe.uses_cfg(SamplingParams(prompt="x", guidance_scale=1.0, guidance_scale_2=1.0))
    # the rule the pipeline builds from its checkpoint: boundary 0.875 of 1000 timesteps
    rule = pipe.expert_rule(make_scheduler("unipc"))
    assert (rule(0, 875.0), rule(1, 874.0)) == ("high", "low")


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


def test_experts_are_checked_against_the_task(wan22_ti2v_dirs, configs):
    pipe = _load(wan22_ti2v_dirs[0]).pipeline
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
