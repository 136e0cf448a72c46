"""Schedulers against their references.

diffusers convention: schedules bit-equal to diffusers' UniPC / DPM-Solver++ / FlowMatchEuler, and
full runs with a fake velocity model equal to theirs. official convention: the schedule written
out from the official Wan code (and hand-derived timesteps), and full runs equal to (a) small
independent re-implementations below and (b) diffusers' solver given the official schedule (the
official solvers are copies of diffusers' algorithms; only their schedules differ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from lightx2v.errors import LightX2VError
from lightx2v.schedulers import (
    SOLVERS,
    DPMSolverPlusPlusScheduler,
    FlowEulerScheduler,
    UniPCScheduler,
    make_scheduler,
    scheduler_from_diffusers_config,
)

STEPS = (1, 2, 4, 10, 50)
SHIFTS = (1.0, 3.0, 5.0, 8.0)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers numpy-2 noise

SHAPE = (1, 4, 2, 3, 3)  # [B, C, T, H, W]

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json
WAN21_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler",
    "_diffusers_version": "0.33.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
DPM_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
}
EULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 5.0}


def fake_velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed nonlinear function of (x, t), standing in for the DiT."""
    t = float(t)
    return 0.7 * torch.tanh(x) + 0.3 * torch.sin(3.0 * x + t / 300.0) - 0.1 * x * (t / 1000.0)


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run_ours(sched, x: torch.Tensor) -> torch.Tensor:
    for t in sched.timesteps:
        x = sched.step(fake_velocity(x, t), x)
    return x


def run_diffusers(ref, x: torch.Tensor) -> torch.Tensor:
    for t in ref.timesteps:
        x = ref.step(fake_velocity(x, t), t, x, return_dict=False)[0]
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def diffusers_ref(solver: str, shift: float):
    if solver == "unipc":
        return UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")
    if solver == "dpm++":
        return DPMSolverMultistepScheduler(
            use_flow_sigmas=True,
            flow_shift=shift,
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    return FlowMatchEulerDiscreteScheduler(shift=shift)


# ----------------------------------------------------------------------------- diffusers convention


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_diffusers_convention_matches_diffusers(solver: str, shift: float, steps: int) -> None:
    ref = diffusers_ref(solver, shift)
    ref.set_timesteps(steps)
    ours = make_scheduler(solver, convention="diffusers")
    ours.set_timesteps(steps, shift)
    assert ours.timesteps.dtype == torch.float32 and ours.sigmas.dtype == torch.float32
    assert torch.equal(ours.timesteps, ref.timesteps.to(torch.float32)), (ours.timesteps, ref.timesteps)
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert len(ours.sigmas) == steps + 1 and ours.sigmas[-1] == 0
    x = noise()
    assert rel_err(run_ours(ours, x), run_diffusers(ref, x)) <= 1e-5


def test_diffusers_convention_first_timesteps() -> None:
    ts = {}
    for solver in SOLVERS:
        s = make_scheduler(solver, convention="diffusers")
        s.set_timesteps(4, 3.0)
        ts[solver] = s.timesteps.tolist()
    assert ts["unipc"] == [999, 900, 750, 500]
    assert ts["dpm++"] == [999, 899, 749, 499]
    assert ts["euler"][0] == 1000.0 and ts["euler"][1] == pytest.approx(857.6923, abs=1e-3)


# ----------------------------------------------------------------------------- official convention


def official_unipc_schedule(n: int, shift: float) -> tuple[list[int], np.ndarray]:
    """FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1).set_timesteps(n, shift=shift)."""
    train_sigmas = torch.from_numpy(1.0 - np.linspace(1, 1 / 1000, 1000)[::-1].copy()).to(torch.float32)
    sigmas = np.linspace(train_sigmas[0].item(), train_sigmas[-1].item(), n + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return (sigmas * 1000).astype(np.int64).tolist(), np.concatenate([sigmas, [0]]).astype(np.float32)


def official_dpm_schedule(n: int, shift: float) -> tuple[list[int], np.ndarray]:
    """get_sampling_sigmas(n, shift) given to FlowDPMSolverMultistepScheduler(shift=1) via retrieve_timesteps."""
    sigmas = np.linspace(1, 0, n + 1)[:n]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return (sigmas * 1000).astype(np.int64).tolist(), np.concatenate([sigmas, [0]]).astype(np.float32)


@pytest.mark.parametrize(
    "shift,steps,expected",
    [
        (3.0, 4, [999, 899, 749, 499]),  # the figures quoted for the official sampler
        (1.0, 2, [999, 499]),  # sigma_max = float32(0.999) = 0.99900001; 0.4995 -> 499
        (5.0, 2, [999, 833]),  # 5 * 0.4995 / (1 + 4 * 0.4995) = 0.83305
        (8.0, 4, [999, 959, 888, 727]),  # 8 * 0.74925 / (1 + 7 * 0.74925) = 0.95987
    ],
)
def test_official_unipc_timesteps(shift: float, steps: int, expected: list[int]) -> None:
    s = make_scheduler("unipc")  # official is the default convention
    s.set_timesteps(steps, shift)
    assert s.timesteps.tolist() == expected


@pytest.mark.parametrize(
    "shift,steps,expected",
    [
        (3.0, 4, [1000, 900, 750, 500]),  # starts at sigma 1: timestep 1000 is given to the DiT
        (5.0, 4, [1000, 937, 833, 625]),  # 5 * 0.25 / (1 + 4 * 0.25) = 0.625
        # linspace(1, 0, 11)[6] = 0.3999999999999999: the official truncation gives 399, not 400
        (1.0, 10, [1000, 900, 800, 700, 600, 500, 399, 299, 199, 99]),
    ],
)
def test_official_dpm_timesteps(shift: float, steps: int, expected: list[int]) -> None:
    s = make_scheduler("dpm++")
    s.set_timesteps(steps, shift)
    assert s.timesteps.tolist() == expected
    assert s.sigmas[0] == 1.0


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_official_schedules_follow_official_code(shift: float, steps: int) -> None:
    for solver, schedule in (("unipc", official_unipc_schedule), ("dpm++", official_dpm_schedule)):
        s = make_scheduler(solver, convention="official")
        s.set_timesteps(steps, shift)
        timesteps, sigmas = schedule(steps, shift)
        assert s.timesteps.tolist() == timesteps, solver
        assert torch.equal(s.sigmas, torch.from_numpy(sigmas)), solver


def _lam(s: float) -> float:
    """log((1 - s) / s), +-inf at the ends."""
    return math.inf if s <= 0 else -math.inf if s >= 1 else math.log((1 - s) / s)


def reference_unipc_bh2(sig: list[float], ts: list[float], x: torch.Tensor) -> torch.Tensor:
    """UniPC-2 with B(h) = expm1(-h), data prediction, order 1 on the first and last step, float64."""
    n, x, hist = len(ts), x.double(), []
    prev_x, prev_order = None, 0
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        x0 = x - s * fake_velocity(x.float(), ts[i]).double()
        if i > 0:  # UniC, with the order of the previous predictor
            sp = sig[i - 1]
            h = _lam(s) - _lam(sp)
            bh = math.expm1(-h)
            base = (s / sp) * prev_x - (1 - s) * bh * hist[-1]
            if prev_order == 1:
                x = base - (1 - s) * bh * 0.5 * (x0 - hist[-1])
            else:
                r = (_lam(sig[i - 2]) - _lam(sp)) / h
                g1 = bh / -h - 1
                b1, b2 = g1 / bh, 2 * (g1 / -h - 0.5) / bh
                rho_a = (b1 - b2) / (1 - r)  # [[1, 1], [r, 1]] @ [rho_a, rho_b] = [b1, b2]
                rho_b = b1 - rho_a
                x = base - (1 - s) * bh * (rho_a * (hist[-2] - hist[-1]) / r + rho_b * (x0 - hist[-1]))
        hist.append(x0)
        order = min(2, n - i, i + 1)
        h = _lam(t) - _lam(s)
        bh = math.expm1(-h)
        prev_x, prev_order = x, order
        x_next = (t / s) * x - (1 - t) * bh * x0
        if order == 2:  # UniP-2 with rho = 1/2
            r = (_lam(sig[i - 1]) - _lam(s)) / h
            x_next = x_next - (1 - t) * bh * 0.5 * (hist[-2] - x0) / r
        x = x_next
    return x


def reference_dpmpp_2m(sig: list[float], ts: list[float], x: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) midpoint, data prediction, first order on the first and last step, float64."""
    n, x, prev_x0 = len(ts), x.double(), None
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        x0 = x - s * fake_velocity(x.float(), ts[i]).double()
        h = _lam(t) - _lam(s)
        if i == 0 or i == n - 1:
            x = (t / s) * x + (1 - t) * (1 - math.exp(-h)) * x0
        else:
            r = (_lam(s) - _lam(sig[i - 1])) / h  # inf after sigma 1: the D1 term vanishes
            d = x0 + 0.5 * (x0 - prev_x0) / r
            x = (t / s) * x + (1 - t) * (1 - math.exp(-h)) * d
        prev_x0 = x0
    return x


@pytest.mark.parametrize("shift", (3.0, 5.0, 8.0))
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("solver", ("unipc", "dpm++"))
def test_official_run_matches_references(solver: str, shift: float, steps: int) -> None:
    ours = make_scheduler(solver, convention="official")
    ours.set_timesteps(steps, shift)
    x = noise(1)
    out = run_ours(ours, x)
    sig, ts = ours.sigmas.tolist(), ours.timesteps.tolist()
    independent = reference_unipc_bh2 if solver == "unipc" else reference_dpmpp_2m
    assert rel_err(out, independent(sig, ts, x)) <= 1e-5
    # diffusers' solver (which the official one copies) on the official schedule
    ref = diffusers_ref(solver, 1.0)
    ref.set_timesteps(steps)
    ref.sigmas, ref.timesteps = ours.sigmas.clone(), ours.timesteps.to(torch.int64)
    assert rel_err(out, run_diffusers(ref, x)) <= 1e-5


# ----------------------------------------------------------------------------- diffusers configs


@pytest.mark.parametrize("steps,shift", [(10, None), (50, None), (4, 5.0)])
def test_wan21_diffusers_config(steps: int, shift: float | None) -> None:
    sched, defaults = scheduler_from_diffusers_config(WAN21_SCHEDULER_CONFIG)
    assert isinstance(sched, UniPCScheduler) and sched.convention == "diffusers"
    assert defaults == {"shift": 3.0, "solver": "unipc"}
    sched.set_timesteps(steps, shift or defaults["shift"])
    ref = UniPCMultistepScheduler.from_config({**WAN21_SCHEDULER_CONFIG, "flow_shift": shift or 3.0})
    ref.set_timesteps(steps)
    assert torch.equal(sched.timesteps, ref.timesteps.float())
    x = noise(2)
    assert rel_err(run_ours(sched, x), run_diffusers(ref, x)) <= 1e-5


VARIANTS = [
    (WAN21_SCHEDULER_CONFIG, {"solver_order": 3}),
    # diffusers' bh1 returns NaN on a last step onto sigma 0 (-inf * 0), so compare it with sigma_min
    (WAN21_SCHEDULER_CONFIG, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    (WAN21_SCHEDULER_CONFIG, {"solver_type": "midpoint"}),  # diffusers maps it to bh2
    (WAN21_SCHEDULER_CONFIG, {"disable_corrector": [0, 2]}),
    (WAN21_SCHEDULER_CONFIG, {"final_sigmas_type": "sigma_min"}),
    (WAN21_SCHEDULER_CONFIG, {"final_sigmas_type": "sigma_min", "lower_order_final": False}),
    (DPM_CONFIG, {}),
    (DPM_CONFIG, {"solver_type": "heun"}),
    (DPM_CONFIG, {"solver_order": 1}),
    (DPM_CONFIG, {"lower_order_final": False, "euler_at_final": True}),
    (EULER_CONFIG, {}),
]


@pytest.mark.parametrize("steps", (4, 20))
@pytest.mark.parametrize("base,variant", VARIANTS)
def test_config_variants_match_diffusers(base: dict, variant: dict, steps: int) -> None:
    cfg = {**base, **variant}
    sched, defaults = scheduler_from_diffusers_config(cfg)
    ref = {
        "UniPCMultistepScheduler": UniPCMultistepScheduler,
        "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
        "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
    }[cfg["_class_name"]].from_config(cfg)
    ref.set_timesteps(steps)
    sched.set_timesteps(steps, defaults["shift"])
    assert torch.equal(sched.timesteps, ref.timesteps.float())
    assert torch.equal(sched.sigmas, ref.sigmas)
    x = noise(3)
    assert rel_err(run_ours(sched, x), run_diffusers(ref, x)) <= 1e-5


def test_bh1_final_step_is_finite() -> None:
    """Where diffusers' bh1 gives NaN (B(h) = -inf times a zero residual), we return x0."""
    sched, defaults = scheduler_from_diffusers_config({**WAN21_SCHEDULER_CONFIG, "solver_type": "bh1"})
    sched.set_timesteps(3, defaults["shift"])
    x = noise(5)
    for t in sched.timesteps[:-1]:
        x = sched.step(fake_velocity(x, t), x)
    v = fake_velocity(x, sched.timesteps[-1])
    out = sched.step(v, x)
    assert torch.isfinite(out).all()
    # the order-1 predictor onto sigma 0 returns the x0 prediction (made before the corrector)
    assert rel_err(out, x - sched.sigmas[-2] * v) <= 1e-6


def test_config_classes() -> None:
    assert isinstance(scheduler_from_diffusers_config(DPM_CONFIG)[0], DPMSolverPlusPlusScheduler)
    sched, defaults = scheduler_from_diffusers_config(EULER_CONFIG)
    assert isinstance(sched, FlowEulerScheduler) and defaults == {"shift": 5.0, "solver": "euler"}


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"_class_name": "DDIMScheduler"}, "DDIMScheduler"),
        ({**WAN21_SCHEDULER_CONFIG, "use_karras_sigmas": True}, "use_karras_sigmas"),
        ({**WAN21_SCHEDULER_CONFIG, "predict_x0": False}, "predict_x0"),
        ({**WAN21_SCHEDULER_CONFIG, "use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({**WAN21_SCHEDULER_CONFIG, "some_new_option": 1}, "some_new_option"),
        ({k: v for k, v in WAN21_SCHEDULER_CONFIG.items() if k != "prediction_type"}, "prediction_type"),
        ({**DPM_CONFIG, "algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ({**DPM_CONFIG, "solver_order": 3}, "solver_order"),
        ({**DPM_CONFIG, "final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
        ({**EULER_CONFIG, "stochastic_sampling": True}, "stochastic_sampling"),
    ],
)
def test_unsupported_config_is_a_clear_error(cfg: dict, needle: str) -> None:
    with pytest.raises(LightX2VError, match=needle):
        scheduler_from_diffusers_config(cfg)


# ----------------------------------------------------------------------------- API and state


def test_unknown_solver_lists_valid_names() -> None:
    with pytest.raises(LightX2VError) as e:
        make_scheduler("ddim")
    for name in SOLVERS:
        assert name in str(e.value)


def test_bad_arguments() -> None:
    with pytest.raises(LightX2VError, match="convention"):
        make_scheduler("unipc", convention="comfy")
    with pytest.raises(LightX2VError, match="solver_ordr"):
        make_scheduler("unipc", config={"solver_ordr": 2})
    s = make_scheduler("euler")
    with pytest.raises(LightX2VError, match="set_timesteps"):
        s.step(torch.zeros(2), torch.zeros(2))
    with pytest.raises(LightX2VError, match="num_inference_steps"):
        s.set_timesteps(0, 3.0)
    with pytest.raises(LightX2VError, match="shift"):
        s.set_timesteps(4, -1.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_state_reset_and_dtype(solver: str) -> None:
    s = make_scheduler(solver)
    s.set_timesteps(5, 5.0)
    x = noise(4)
    first = run_ours(s, x)
    assert s.step_index == 5
    with pytest.raises(LightX2VError, match="steps are done"):
        s.step(x, x)
    s.reset()
    assert s.state.x0_history == [] and s.state.last_sample is None
    assert torch.equal(run_ours(s, x), first)  # no history leaks into the second run
    s.set_timesteps(5, 5.0)
    y = s.step(fake_velocity(x, s.timesteps[0]).bfloat16(), x.bfloat16())
    assert y.dtype == torch.bfloat16
    s.reset()
    y32 = s.step(fake_velocity(x, s.timesteps[0]).bfloat16().float(), x.bfloat16().float())
    assert torch.equal(y, y32.bfloat16())  # float32 inside, the sample's dtype out
    assert s.init_noise_sigma == 1.0
