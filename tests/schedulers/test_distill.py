"""The step-distill sampler and the distilled-model presets.

Reference (ModelTC/LightX2V lightx2v/models/schedulers/wan/step_distill/scheduler.py,
configs/distill/wan21/*.json): sigma table shift(linspace(1, 0, 1001)[:-1]) read at 1000 - step,
timesteps sigma * 1000, step x0 = x - sigma_i v, then x0 + sigma_{i+1} v (x0 on the last step).
The expected values below are worked out by hand from that formula: the unshifted sigma of step
d is d / 1000, and shift 5 maps 1, .75, .5, .25 to 1, 3.75 / 4, 2.5 / 3, 1.25 / 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v.errors import LightX2VError
from lightx2v.models.wan.distill import (
    DISTILL_DEFAULTS,
    DISTILL_PRESETS,
    cfg_warning,
    defaults_from_lightx2v_config,
    distill_preset_for,
)
from lightx2v.schedulers import SOLVER_NAMES, SOLVERS, StepDistillScheduler, make_scheduler

SHAPE = (1, 4, 2, 3, 3)  # [B, C, T, H, W]

# shift 5, steps (1000, 750, 500, 250): float32 of 1, 0.9375, 2.5 / 3, 0.625, then the final 0
SIGMAS_SHIFT5 = [1.0, 0.9375, 0.8333333134651184, 0.625, 0.0]
TIMESTEPS_SHIFT5 = [1000.0, 937.5, 833.3333129882812, 625.0]
# shift 3: 1, 2.25 / 2.5, 1.5 / 2, 0.75 / 1.5
SIGMAS_SHIFT3 = [1.0, 0.8999999761581421, 0.75, 0.5, 0.0]


def fake_velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed nonlinear function of (x, t), standing in for the DiT."""
    t = float(t)
    return 0.7 * torch.tanh(x) + 0.3 * torch.sin(3.0 * x + t / 300.0) - 0.1 * x * (t / 1000.0)


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run(sched, x: torch.Tensor) -> torch.Tensor:
    for t in sched.timesteps:
        x = sched.step(fake_velocity(x, t), x)
    return x


# ----------------------------------------------------------------------------- schedule


def test_default_schedule_is_the_reference_table() -> None:
    s = make_scheduler("distill")
    s.set_timesteps(4, 5.0)
    assert s.timesteps.dtype == torch.float32 and s.sigmas.dtype == torch.float32
    assert s.timesteps.tolist() == TIMESTEPS_SHIFT5  # floats, not truncated to 833
    assert s.sigmas.tolist() == SIGMAS_SHIFT5
    s.set_timesteps(4, 3.0)
    assert s.sigmas.tolist() == SIGMAS_SHIFT3
    assert s.timesteps.tolist() == [1000.0, 900.0, 750.0, 500.0]


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 7.5])
def test_other_step_lists_follow_the_formula(shift: float) -> None:
    steps = (1000, 875, 750, 625, 500, 375, 250, 125)  # the reference's 8-step list (Hunyuan distill)
    s = StepDistillScheduler(denoising_steps=steps)
    s.set_timesteps(len(steps), shift)
    u = np.array(steps, dtype=np.float64) / 1000.0  # the unshifted sigma of step d is d / T
    expected = shift * u / (1 + (shift - 1) * u)
    np.testing.assert_allclose(s.sigmas[:-1].numpy(), expected, rtol=2e-7)
    np.testing.assert_allclose(s.timesteps.numpy(), expected * 1000.0, rtol=2e-7)
    assert s.sigmas[-1] == 0


# ----------------------------------------------------------------------------- full runs


def test_four_step_run_equals_the_reference_loop() -> None:
    x = noise()
    s = make_scheduler("distill")
    s.set_timesteps(4, 5.0)
    ours = run(s, x)

    ref = x.clone()
    for i in range(4):
        v = fake_velocity(ref, TIMESTEPS_SHIFT5[i])
        x0 = ref - SIGMAS_SHIFT5[i] * v
        ref = x0 + SIGMAS_SHIFT5[i + 1] * v if i < 3 else x0
    assert torch.equal(ours, ref)
    # "predicted" re-noising is an Euler step in flow space (up to rounding)
    euler = x.clone()
    for i in range(4):
        euler = euler + (SIGMAS_SHIFT5[i + 1] - SIGMAS_SHIFT5[i]) * fake_velocity(euler, TIMESTEPS_SHIFT5[i])
    assert (ours - euler).abs().max() <= 1e-5 * euler.abs().max()


def test_fresh_noise_run_equals_the_reference_loop() -> None:
    x = noise()
    s = make_scheduler("distill", config={"renoise": "fresh", "generator": torch.Generator().manual_seed(7)})
    s.set_timesteps(4, 5.0)
    ours = run(s, x)

    g = torch.Generator().manual_seed(7)
    ref = x.clone()
    for i in range(4):
        v = fake_velocity(ref, TIMESTEPS_SHIFT5[i])
        x0 = ref - SIGMAS_SHIFT5[i] * v
        if i < 3:
            eps = torch.randn(SHAPE, generator=g, dtype=torch.float32)
            ref = (1 - SIGMAS_SHIFT5[i + 1]) * x0 + SIGMAS_SHIFT5[i + 1] * eps
        else:
            ref = x0
    assert torch.equal(ours, ref)
    s.reset()  # the generator rewinds: a rerun draws the same noise
    assert torch.equal(run(s, x), ref)
    other = make_scheduler("distill", config={"renoise": "fresh", "generator": torch.Generator().manual_seed(8)})
    other.set_timesteps(4, 5.0)
    assert not torch.equal(run(other, x), ref)


def test_state_and_dtype() -> None:
    s = make_scheduler("distill")
    s.set_timesteps(4, 5.0)
    x = noise(3)
    first = run(s, x)
    with pytest.raises(LightX2VError, match="steps are done"):
        s.step(x, x)
    s.reset()
    assert torch.equal(run(s, x), first)
    s.reset()
    y = s.step(fake_velocity(x, s.timesteps[0]).bfloat16(), x.bfloat16())
    assert y.dtype == torch.bfloat16  # float32 inside, the sample's dtype out


# ----------------------------------------------------------------------------- errors and registry


@pytest.mark.parametrize("steps", [3, 5, 50])
def test_other_step_counts_are_an_error(steps: int) -> None:
    s = make_scheduler("distill")
    with pytest.raises(LightX2VError, match="num_inference_steps must be 4, got") as e:
        s.set_timesteps(steps, 5.0)
    assert "1000, 750, 500, 250" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"denoising_steps": [750, 1000]}, "strictly decreasing"),
        ({"denoising_steps": [1001, 500]}, r"\[1, 1000\]"),
        ({"denoising_steps": [1000, 0]}, r"\[1, 1000\]"),
        ({"denoising_steps": []}, "non-empty"),
        ({"denoising_steps": [1000.0, 500.0]}, "integers"),
        ({"renoise": "sde"}, "renoise"),
        ({"renoise": "fresh"}, "Generator"),
        ({"steps": [1000]}, "has no option"),
    ],
)
def test_bad_options(options: dict, needle: str) -> None:
    with pytest.raises(LightX2VError, match=needle):
        make_scheduler("distill", config=options)


def test_registry() -> None:
    assert isinstance(make_scheduler("distill"), StepDistillScheduler)
    assert "distill" in SOLVER_NAMES and "distill" not in SOLVERS  # SOLVERS: any-step-count solvers
    assert set(SOLVERS) < set(SOLVER_NAMES)
    with pytest.raises(LightX2VError, match="unknown solver 'lcm'") as e:
        make_scheduler("lcm")
    for name in SOLVER_NAMES:
        assert name in str(e.value)


# ----------------------------------------------------------------------------- presets


def test_defaults_and_presets() -> None:
    d = DISTILL_DEFAULTS
    assert (d.solver, d.num_inference_steps, d.shift, d.guidance_scale) == ("distill", 4, 5.0, 1.0)
    assert d.denoising_steps == (1000, 750, 500, 250)
    sd = d.sampling_defaults(negative_prompt="neg")
    assert (sd.solver, sd.num_inference_steps, sd.shift, sd.guidance_scale, sd.area_shift) == ("distill", 4, 5.0, 1.0, None)
    assert sd.shift_for(480, 832) == 5.0  # not the official I2V 480p shift 3
    assert set(DISTILL_PRESETS) == {"wan2.1-t2v-14b-distill", "wan2.1-i2v-480p-distill", "wan2.1-i2v-720p-distill"}
    for p in DISTILL_PRESETS.values():
        assert p.defaults == DISTILL_DEFAULTS
    sched = make_scheduler(d.solver, config=d.solver_options())
    sched.set_timesteps(d.num_inference_steps, d.shift)
    assert sched.timesteps.tolist() == TIMESTEPS_SHIFT5


def test_cfg_warning() -> None:
    assert cfg_warning(1.0) is None
    w = cfg_warning(5.0)
    assert w is not None and "\n" not in w and "without CFG" in w and "doubles" in w and "5" in w


def test_lightx2v_config_decides() -> None:
    # configs/distill/wan21/wan_t2v_distill_model_4step_cfg.json (the sampling fields)
    cfg = {"infer_steps": 4, "sample_guide_scale": 6, "sample_shift": 5, "enable_cfg": False,
           "denoising_step_list": [1000, 750, 500, 250]}
    assert defaults_from_lightx2v_config(cfg) == DISTILL_DEFAULTS
    m = distill_preset_for("t2v", config=cfg, name="some_name.safetensors")
    assert m.defaults == DISTILL_DEFAULTS and "denoising_step_list" in m.evidence and m.notice is None
    assert m.preset.name == "wan2.1-t2v-14b-distill"
    assert distill_preset_for("i2v", config=cfg).preset is None  # 480p or 720p: not said
    custom = defaults_from_lightx2v_config({**cfg, "denoising_step_list": [1000, 500], "sample_shift": 3,
                                            "enable_cfg": True})
    assert (custom.num_inference_steps, custom.denoising_steps, custom.shift, custom.guidance_scale) == (
        2, (1000, 500), 3.0, 6.0)
    assert defaults_from_lightx2v_config({"infer_steps": 50, "sample_shift": 5}) is None
    with pytest.raises(LightX2VError, match="mean_flow"):
        defaults_from_lightx2v_config({**cfg, "distill_method": "mean_flow"})
    with pytest.raises(LightX2VError, match="strictly decreasing"):
        defaults_from_lightx2v_config({**cfg, "denoising_step_list": [250, 500]})


def test_explicit_preset(tmp_path) -> None:
    m = distill_preset_for("i2v", preset="wan2.1-i2v-720p-distill", name="Wan2.1_VAE.pth")
    assert m.preset.resolution == "720p" and m.defaults == DISTILL_DEFAULTS and m.notice is None
    with pytest.raises(LightX2VError, match="unknown preset 'wan-distill'; expected one of wan2.1-t2v-14b-distill"):
        distill_preset_for("t2v", preset="wan-distill")
    with pytest.raises(LightX2VError, match="is a i2v model, but this checkpoint is t2v"):
        distill_preset_for("t2v", preset="wan2.1-i2v-480p-distill")

    class Dit13B:  # WanDiTConfig of the 1.3B model
        dim, num_layers, num_heads, ffn_dim = 1536, 30, 12, 8960

    with pytest.raises(LightX2VError, match="for the 14B model, but this checkpoint is 1.3B"):
        distill_preset_for("t2v", preset="wan2.1-t2v-14b-distill", dit=Dit13B())


def test_layout_decides(tmp_path) -> None:
    assert distill_preset_for("t2v", root=tmp_path) is None
    (tmp_path / "distill_models").mkdir()
    (tmp_path / "distill_models" / "distill_model.safetensors").write_bytes(b"")
    m = distill_preset_for("t2v", root=tmp_path)
    assert m.defaults == DISTILL_DEFAULTS and "distill_models/distill_model.safetensors" in m.evidence
    assert m.notice is None


@pytest.mark.parametrize(
    ("name", "task", "preset"),
    [
        ("Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors", "t2v", "wan2.1-t2v-14b-distill"),
        ("wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", "t2v", "wan2.1-t2v-14b-distill"),
        ("loras/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors", "i2v", "wan2.1-i2v-480p-distill"),
        ("wan2.1_i2v_480p_scaled_fp8_e4m3_lightx2v_4step.safetensors", "i2v", "wan2.1-i2v-480p-distill"),
        ("wan2.1_i2v_720p_lightx2v_4step.safetensors", "i2v", "wan2.1-i2v-720p-distill"),
        ("lightx2v/Wan2.1-I2V-14B-720P-StepDistill-CfgDistill-Lightx2v", "i2v", "wan2.1-i2v-720p-distill"),
        # not distilled, another family or size, no task, or another task than the checkpoint's
        ("wan2.1_i2v_480p_lightx2v.safetensors", "i2v", None),
        ("wan2.2_i2v_A14b_high_noise_lightx2v_4step.safetensors", "i2v", None),
        ("Wan2.1-T2V-1.3B-StepDistill.safetensors", "t2v", None),
        ("distill_model.safetensors", "t2v", None),
        ("wan2.1_i2v_480p_lightx2v_4step.safetensors", "t2v", None),
    ],
)
def test_name_is_only_a_hint(name: str, task: str, preset: str | None) -> None:
    m = distill_preset_for(task, name=name)
    if preset is None:
        assert m is None
        return
    assert m.preset.name == preset and m.defaults == DISTILL_DEFAULTS
    assert m.notice.startswith(f"assuming {preset} from the name") and "--preset" in m.notice
    assert "4 steps (1000, 750, 500, 250), shift 5, guidance 1" in m.notice
