"""Flow-matching Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i.

The schedule is diffusers' `FlowMatchEulerDiscreteScheduler(shift=S)` (see
`base.flow_match_euler_schedule`: float timesteps from 1000 down to shift(shift(1/T)) * T, then a
final sigma 0). The official Wan repository has no Euler solver, so both conventions use this
schedule; `shift` given to `set_timesteps` plays the role of the constructor's `shift`.
"""

from __future__ import annotations

import numpy as np
import torch

from lightx2v.schedulers.base import Scheduler, flow_match_euler_schedule


class FlowEulerScheduler(Scheduler):
    """First-order flow-matching Euler; no history."""

    name = "euler"

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        return flow_match_euler_schedule(n, shift, self.num_train_timesteps)

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return x + (self._sig[i + 1] - self._sig[i]) * v
