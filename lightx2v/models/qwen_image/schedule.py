"""Qwen-Image's sampling schedule: flow-matching Euler with a resolution-dependent ("dynamic") shift.

Design: the releases ship a diffusers `FlowMatchEulerDiscreteScheduler` config with
`use_dynamic_shifting` (Qwen/Qwen-Image: base_shift 0.5, max_shift 0.9, image seq lens 256 / 8192,
shift_terminal 0.02, exponential time shift). diffusers' QwenImagePipeline then samples with
    sigmas = linspace(1, 1/n, n)                                    (float64, then float32 in the scheduler)
    mu     = calculate_shift(image_seq_len, base_seq, max_seq, base_shift, max_shift)   (a line through the two)
    sigmas = e^mu / (e^mu + (1/sigma - 1))                          (the exponential time shift; linear: mu / (mu + ...))
    sigmas = 1 - (1 - sigmas) / ((1 - sigmas[-1]) / (1 - shift_terminal))   (when shift_terminal is set)
    timesteps = sigmas * 1000, then a final sigma 0; x += (sigma_next - sigma) * v
`QwenSchedule` reads the file (every field honoured or refused by name) and computes that, in float32
where diffusers computes in float32; `DynamicShiftEuler` is our Euler solver (schedulers/euler.py) on it.

An explicit shift S (a request's `shift`, e.g. the Lightning LoRAs' fixed shift 3) replaces the dynamic
one: mu = ln S under the exponential time shift, which is the usual shift S*s / (1 + (S - 1) s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from lightx2v.errors import CheckpointError, InputError
from lightx2v.schedulers.euler import FlowEulerScheduler

__all__ = ["DynamicShiftEuler", "QwenSchedule"]

# keys that must hold the value that means "off" (options diffusers has that this schedule does not do)
_MUST_BE = {"invert_sigmas": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
            "use_beta_sigmas": False, "stochastic_sampling": False}


@dataclass(frozen=True)
class QwenSchedule:
    """A FlowMatchEulerDiscreteScheduler config (diffusers' defaults where the file says nothing)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0                  # the fixed shift when use_dynamic_shifting is false
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: Optional[float] = None
    time_shift_type: str = "exponential"

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], where: str = "scheduler/scheduler_config.json") -> "QwenSchedule":
        name = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
        if name != "FlowMatchEulerDiscreteScheduler":
            raise CheckpointError(f"{where} is a {name}; Qwen-Image samples with a FlowMatchEulerDiscreteScheduler")
        fields = set(cls.__dataclass_fields__)
        kw = {}
        for key, value in cfg.items():
            if key.startswith("_"):
                continue
            if key in _MUST_BE:
                if value != _MUST_BE[key]:
                    raise CheckpointError(f"{where}: {key} = {value!r} is not supported; expected {_MUST_BE[key]!r}")
            elif key in fields:
                kw[key] = value
            else:
                raise CheckpointError(f"{where}: unknown field {key!r}; supported: {', '.join(sorted(fields | set(_MUST_BE)))}")
        out = cls(**kw)
        if out.time_shift_type not in ("exponential", "linear"):
            raise CheckpointError(f"{where}: time_shift_type {out.time_shift_type!r}; expected exponential or linear")
        if out.use_dynamic_shifting and out.max_image_seq_len == out.base_image_seq_len:
            raise CheckpointError(f"{where}: max_image_seq_len equals base_image_seq_len; the shift line needs two points")
        return out

    def mu(self, image_seq_len: int) -> float:
        """diffusers' calculate_shift: the line through (base_seq, base_shift) and (max_seq, max_shift)."""
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        b = self.base_shift - m * self.base_image_seq_len
        return image_seq_len * m + b

    def sigmas(self, n: int, image_seq_len: int, shift: Optional[float] = None,
               grid: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(float32 sigmas [n + 1] ending in 0, float32 timesteps [n]) for `n` steps of an image of
        `image_seq_len` packed tokens; `shift` (not None) replaces the dynamic shift. `grid` (n numbers,
        Qwen-Image-2.1 Turbo's `sample_sigmas`) replaces linspace(1, 1/n, n) before the shift."""
        if n < 2 and self.shift_terminal:  # (1 - sigma) is 0 at the one step: diffusers divides 0 by 0 (NaN)
            raise InputError("num_inference_steps must be at least 2 with this scheduler (its shift_terminal "
                             f"stretches the schedule between the first and last steps), got {n}",
                             field="num_inference_steps")
        # -- qwen-image 2.1: a checkpoint's own sigma grid --
        if grid is not None:
            if len(grid) != n:
                raise InputError(f"this checkpoint samples on its own grid of {len(grid)} sigmas "
                                 f"(model_index.json sample_sigmas): num_inference_steps must be {len(grid)}, got {n}",
                                 field="num_inference_steps")
            s = np.asarray(grid, dtype=np.float64).astype(np.float32)
        else:
            s = np.linspace(1.0, 1.0 / n, n).astype(np.float32)
        if shift is not None:
            mu = math.log(shift) if self.time_shift_type == "exponential" else shift
            s = self._time_shift(mu, s)
        elif self.use_dynamic_shifting:
            s = self._time_shift(self.mu(image_seq_len), s)
        else:
            s = self.shift * s / (1 + (self.shift - 1) * s)
        if self.shift_terminal:
            one_minus = 1 - s
            s = 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))
        s = s.astype(np.float32)
        timesteps = s * np.float32(self.num_train_timesteps)
        return np.concatenate([s, np.zeros(1, np.float32)]), timesteps.astype(np.float32)

    def _time_shift(self, mu: float, s: np.ndarray) -> np.ndarray:
        # float32 arrays with Python scalars, as diffusers' numpy expression
        if self.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
        return mu / (mu + (1 / s - 1) ** 1.0)


class DynamicShiftEuler(FlowEulerScheduler):
    """Our flow Euler solver on a `QwenSchedule`: `set_timesteps(n, shift)` where `shift` None is the dynamic
    shift for `image_seq_len` tokens, a number a fixed shift."""

    def __init__(self, schedule: QwenSchedule, image_seq_len: int, grid: Optional[Sequence[float]] = None) -> None:
        super().__init__(convention="diffusers", num_train_timesteps=schedule.num_train_timesteps)
        self.schedule = schedule
        self.image_seq_len = image_seq_len
        self.grid = grid  # qwen-image 2.1 Turbo: the checkpoint's sigma grid (QwenSchedule.sigmas)
        self.fixed_shift: Optional[float] = None

    def set_timesteps(self, num_inference_steps: int, shift: Optional[float] = None, device=None) -> None:
        self.fixed_shift = shift
        super().set_timesteps(num_inference_steps, shift=1.0 if shift is None else shift, device=device)

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        return self.schedule.sigmas(n, self.image_seq_len, self.fixed_shift, self.grid)
