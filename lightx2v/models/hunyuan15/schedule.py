"""HunyuanVideo-1.5's sampling schedule: flow-matching Euler on evenly spaced, shifted sigmas.

Design: diffusers' HunyuanVideo15Pipeline gives its `FlowMatchEulerDiscreteScheduler` explicit sigmas
    sigmas    = linspace(1, 0, n + 1)[:-1]                     (float64, then float32 in the scheduler)
    sigmas    = shift * s / (1 + (shift - 1) * s)             (float32; the config's fixed shift)
    timesteps = sigmas * 1000 (float32), then a final sigma 0; x += (sigma_next - sigma) * v
(the official pipeline's FlowMatchDiscreteScheduler spaces them the same way). This differs from the
scheduler's own spacing (schedulers/euler.py: from 1 to shift(shift(1/T))), so `HunyuanEuler` is
our Euler solver on this schedule. The config is read by `read_scheduler`: any option that would
change these sigmas is refused by name.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lightx2v.errors import CheckpointError
from lightx2v.schedulers.euler import FlowEulerScheduler

__all__ = ["HunyuanEuler", "read_scheduler", "sigmas"]

# keys that must hold the value that means "off": each would change the sigmas above
_MUST_BE = {"invert_sigmas": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
            "use_beta_sigmas": False, "stochastic_sampling": False, "use_dynamic_shifting": False,
            "shift_terminal": None}
# keys with no effect when the sigmas are given and the shift is fixed
_IGNORED = {"base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type"}


def read_scheduler(cfg: Mapping[str, Any], where: str = "scheduler/scheduler_config.json") -> tuple[float, dict]:
    """(the default shift, the config) of a FlowMatchEulerDiscreteScheduler config."""
    name = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    if name != "FlowMatchEulerDiscreteScheduler":
        raise CheckpointError(f"{where} is a {name}; HunyuanVideo-1.5 samples with a FlowMatchEulerDiscreteScheduler")
    for key, value in cfg.items():
        if key.startswith("_") or key in _IGNORED or key in ("shift", "num_train_timesteps"):
            continue
        if key not in _MUST_BE:
            raise CheckpointError(f"{where}: unknown option {key!r}")
        if value != _MUST_BE[key]:
            raise CheckpointError(f"{where}: {key} = {value!r} is not supported (expected {_MUST_BE[key]!r})")
    if int(cfg.get("num_train_timesteps", 1000)) != 1000:
        raise CheckpointError(f"{where}: num_train_timesteps = {cfg['num_train_timesteps']} is not supported "
                              "(the DiT's timesteps are in [0, 1000])")
    return float(cfg.get("shift", 1.0)), dict(cfg)


def sigmas(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(float32 sigmas [n + 1] ending in 0, float32 timesteps [n]) as diffusers computes them."""
    s = np.linspace(1.0, 0.0, n + 1)[:-1].astype(np.float32)
    s = shift * s / (1 + (shift - 1) * s)  # float32 (numpy keeps the array's dtype with a Python scalar)
    s = s.astype(np.float32)
    timesteps = (s * np.float32(1000)).astype(np.float32)
    return np.concatenate([s, np.zeros(1, dtype=np.float32)]), timesteps


class HunyuanEuler(FlowEulerScheduler):
    """First-order flow-matching Euler on HunyuanVideo-1.5's schedule (`sigmas`)."""

    name = "euler"

    def __init__(self) -> None:
        super().__init__(convention="diffusers", num_train_timesteps=1000)

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        return sigmas(n, shift)
