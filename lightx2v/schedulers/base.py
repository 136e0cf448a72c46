"""Scheduler base class and the shared flow-matching sigma schedules.

Flow matching in Wan: x_t = (1 - sigma) * x0 + sigma * noise, the DiT predicts the velocity
v = noise - x0, and it is given the timestep `sigma * num_train_timesteps`. So the data
prediction is x0 = x_t - sigma * v, and in DPM-Solver terms alpha_t = 1 - sigma, sigma_t = sigma,
lambda = log(alpha / sigma).

A solver is a `Scheduler` subclass that supplies two things:
  * `_schedule(n, shift)`: the sigmas (n + 1, the last one final) and the timesteps (n) of one
    of the reference constructions below, chosen by `convention`;
  * `_update(v, x, i)`: one step from sigmas[i] to sigmas[i + 1].
The base class owns the bookkeeping: dtype handling (the update runs in float32 and returns the
sample's dtype), the step counter and the multistep history (`SolverState`, cleared by `reset()`).

Schedules are computed with numpy in float64 and rounded to float32 exactly where the references
round, so that timesteps (integers truncated from float64, as `tensor.to(int64)` does in both
references) match them bit for bit. Per-step coefficients are computed in float64 from the float32
sigmas (the references compute them in float32; the difference is ~1e-7 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from lightx2v.errors import LightX2VError

CONVENTIONS = ("official", "diffusers")


# ----------------------------------------------------------------------------- schedules


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The SD3 / Wan timestep shift s' = shift * s / (1 + (shift - 1) * s), in float64.

    The operation order is the references' (it decides the last bit, hence truncated timesteps).
    """
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def finish_schedule(
    sigmas: np.ndarray, num_train_timesteps: int, final_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """float64 sigmas (n,) -> (float32 sigmas (n+1,) ending in `final_sigma`, float32 timesteps (n,)).

    Timesteps are `sigma * T` truncated toward zero (the references' `.to(torch.int64)`).
    """
    timesteps = np.trunc(sigmas * num_train_timesteps).astype(np.float32)
    sigmas = np.concatenate([sigmas, [final_sigma]]).astype(np.float32)
    return sigmas, timesteps


def wan_unipc_sigmas(n: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    """Official `FlowUniPCMultistepScheduler(shift=1).set_timesteps(n, shift=shift)` sigmas (n,).

    The constructor's training sigmas are 1 - linspace(1, 1/T, T)[::-1] cast to float32 (shift 1
    is the identity), so sigma_max = float32(1 - 1/T) (0.9990000128746033) and sigma_min = 0;
    set_timesteps takes linspace(sigma_max, sigma_min, n + 1)[:-1] and shifts it.
    """
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    return shift_sigmas(np.linspace(sigma_max, 0.0, n + 1)[:-1], shift)


def wan_sampling_sigmas(n: int, shift: float) -> np.ndarray:
    """Official `get_sampling_sigmas(n, shift)` (used with the dpm++ solver): starts at sigma 1.

    The official code then passes them to `FlowDPMSolverMultistepScheduler(shift=1)
    .set_timesteps(sigmas=...)`, whose shift by 1 is the identity (bit for bit).
    """
    return shift_sigmas(np.linspace(1.0, 0.0, n + 1)[:n], shift)


def diffusers_unipc_sigmas(n: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    """diffusers `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)` sigmas (n,).

    linspace(1, 1/T, n + 1)[:-1], shifted; a first sigma within 1e-6 of 1 is lowered by 1e-6
    (diffusers does so to keep log(alpha) finite).
    """
    sigmas = shift_sigmas(np.linspace(1.0, 1.0 / num_train_timesteps, n + 1)[:-1], shift)
    if abs(sigmas[0] - 1.0) < 1e-6:
        sigmas[0] -= 1e-6
    return sigmas


def diffusers_dpm_sigmas(n: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    """diffusers `DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)` sigmas (n,).

    flip(shift(1 - linspace(1, 1/T, n + 1)))[:-1]: starts at shift(0.999), like the official
    UniPC schedule but computed differently (the last bits, hence some timesteps, differ).
    """
    sigmas = 1.0 - np.linspace(1.0, 1.0 / num_train_timesteps, n + 1)
    return np.flip(shift_sigmas(sigmas, shift))[:-1].copy()


def flow_match_euler_schedule(n: int, shift: float, num_train_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """diffusers `FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(n)`: (sigmas (n+1,), timesteps (n,)).

    Its constructor shifts the float32 training sigmas (T..1)/T once, which sets sigma_max = 1 and
    sigma_min = shift(1/T); set_timesteps spaces n timesteps linearly between those two and shifts
    them *again* (so the last sigma is shift(shift(1/T)), not 0), then appends a final 0.
    Timesteps are float32 `sigma * T`, not truncated.
    """
    T = num_train_timesteps
    ends = torch.tensor([float(T), 1.0], dtype=torch.float32) / T  # training sigmas at both ends
    ends = shift * ends / (1 + (shift - 1) * ends)  # float32, as the constructor does
    sigma_max, sigma_min = (float(s) for s in ends)
    sigmas = shift_sigmas(np.linspace(sigma_max * T, sigma_min * T, n) / T, shift)
    sigmas32 = torch.from_numpy(sigmas).to(torch.float32)
    timesteps = (sigmas32 * T).numpy()
    return np.concatenate([sigmas32.numpy(), np.zeros(1, dtype=np.float32)]), timesteps


def log_snr(sigma: float) -> float:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma; +inf at sigma 0, -inf at sigma 1."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


# ----------------------------------------------------------------------------- state + base


@dataclass
class SolverState:
    """What a multistep solver remembers between steps of one sampling run."""

    step_index: int = 0
    # x0 predictions of the last steps, newest last; each like the sample, float32
    x0_history: list[torch.Tensor] = field(default_factory=list)
    last_sample: torch.Tensor | None = None  # UniPC: the sample its last predictor started from
    last_order: int = 0  # UniPC: the order of the last predictor (the corrector reuses it)
    lower_order_nums: int = 0  # warm-up counter: steps taken, capped at the solver order

    def reset(self) -> None:
        self.step_index = 0
        self.x0_history = []
        self.last_sample = None
        self.last_order = 0
        self.lower_order_nums = 0


class Scheduler:
    """A flow-matching ODE solver: `set_timesteps`, then one `step` per model evaluation.

    Attributes after `set_timesteps(n, shift)`:
      timesteps: float32 [n], what the DiT is given (integer-valued where the reference truncates)
      sigmas:    float32 [n + 1], sigmas[i] is the noise level of the sample fed at step i;
                 the last one is the final level (0 unless final_sigmas_type="sigma_min")
    """

    name: ClassVar[str] = ""
    init_noise_sigma: float = 1.0  # the initial latent is pure noise, unscaled

    def __init__(self, *, convention: str = "official", num_train_timesteps: int = 1000) -> None:
        if convention not in CONVENTIONS:
            valid = ", ".join(CONVENTIONS)
            raise LightX2VError(f"unknown scheduler convention {convention!r}; expected one of {valid}")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise LightX2VError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        self.convention = convention
        self.num_train_timesteps = num_train_timesteps
        self.state = SolverState()
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self._sig: list[float] = []  # sigmas as Python floats: coefficients never sync a device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(convention={self.convention!r}, steps={self.num_inference_steps})"

    @property
    def num_inference_steps(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    @property
    def step_index(self) -> int:
        return self.state.step_index

    def set_timesteps(self, num_inference_steps: int, shift: float, device: torch.device | str | None = None) -> None:
        """Build the schedule for `num_inference_steps` steps at this `shift`, and reset the history."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise LightX2VError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
            raise LightX2VError(f"shift must be a finite number > 0, got {shift!r}")
        sigmas, timesteps = self._schedule(num_inference_steps, float(shift))
        self.sigmas = torch.from_numpy(sigmas).to(device)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._sig = [float(s) for s in sigmas]
        self.state.reset()

    def reset(self) -> None:
        """Forget the multistep history and restart at the first step of the current schedule."""
        self.state.reset()

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance `sample` (at sigmas[step_index]) to sigmas[step_index + 1] given the predicted velocity."""
        i = self.state.step_index
        if self.timesteps is None:
            raise LightX2VError(f"{type(self).__name__}.step() called before set_timesteps()")
        if i >= self.num_inference_steps:
            raise LightX2VError(
                f"{type(self).__name__}: all {self.num_inference_steps} steps are done; "
                "call set_timesteps() or reset() to sample again"
            )
        if model_output.shape != sample.shape:
            raise LightX2VError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        out = self._update(model_output.float(), sample.float(), i)
        self.state.step_index = i + 1
        return out.to(sample.dtype)

    # -- for subclasses

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        """(float32 sigmas [n + 1], float32 timesteps [n])."""
        raise NotImplementedError

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """One step from sigma `self._sig[i]` to `self._sig[i + 1]`; v, x and the result are float32."""
        raise NotImplementedError

    def _push_x0(self, x0: torch.Tensor, keep: int) -> None:
        """Append an x0 prediction to the history, keeping the newest `keep`."""
        self.state.x0_history = (self.state.x0_history + [x0])[-keep:]


def check_choice(owner: str, option: str, value: object, allowed: tuple) -> None:
    """Raise a LightX2VError naming the option when `value` is not one of `allowed`."""
    if value not in allowed:
        raise LightX2VError(f"{owner}: {option}={value!r} is not supported; expected one of {allowed}")
