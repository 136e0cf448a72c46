"""DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) 2M multistep, deterministic, in flow space.

The algorithm of the official Wan `FlowDPMSolverMultistepScheduler` (algorithm "dpmsolver++",
the only one it is used with) and of diffusers' `DPMSolverMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction")`: data prediction x0 = x - sigma * v, first order on the first
step and on the last one (always with final sigma 0), second order ("midpoint" or "heun") between.

The two conventions differ only in the sigma schedule (see `base.py`):
  official:  the official `generate()` builds it with `get_sampling_sigmas(n, shift)`, i.e.
             shift(linspace(1, 0)): it starts at sigma 1 (timestep 1000), e.g. 1000, 900, 750, 500
  diffusers: shift(1 - linspace(1, 1/T)) flipped: starts at shift(0.999), e.g. 999, 899, 749, 499
Sigma 1 has lambda = -inf; the update below is written so that it stays finite there, as the
references' (where exp(-inf) = 0 and 1 / inf = 0 make the terms vanish).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lightx2v.schedulers.base import (
    Scheduler,
    finish_schedule,
    check_choice,
    diffusers_dpm_sigmas,
    log_snr,
    wan_sampling_sigmas,
)


class DPMSolverPlusPlusScheduler(Scheduler):
    """Flow-matching DPM-Solver++ (2M). Options are diffusers' names and defaults."""

    name = "dpm++"

    def __init__(
        self,
        *,
        convention: str = "official",
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        super().__init__(convention=convention, num_train_timesteps=num_train_timesteps)
        check_choice("dpm++", "solver_order", solver_order, (1, 2))
        check_choice("dpm++", "solver_type", solver_type, ("midpoint", "heun"))
        check_choice("dpm++", "lower_order_final", lower_order_final, (True, False))
        check_choice("dpm++", "euler_at_final", euler_at_final, (True, False))
        # diffusers' "sigma_min" takes the last sigma of its (unused) beta schedule: not a flow sigma
        check_choice("dpm++", "final_sigmas_type", final_sigmas_type, ("zero",))
        self.solver_order = solver_order
        self.solver_type = solver_type
        self.lower_order_final = lower_order_final
        self.euler_at_final = euler_at_final
        self.final_sigmas_type = final_sigmas_type

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        T = self.num_train_timesteps
        if self.convention == "official":
            sigmas = wan_sampling_sigmas(n, shift)
        else:
            sigmas = diffusers_dpm_sigmas(n, shift, T)
        return finish_schedule(sigmas, T, 0.0)

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        st = self.state
        x0 = x - self._sig[i] * v  # x, v, x0: like the sample, float32
        self._push_x0(x0, self.solver_order)
        n = self.num_inference_steps
        # the references' lower_order_final: with final sigma 0 the last step is always first order
        last_first_order = i == n - 1 and (
            self.euler_at_final or (self.lower_order_final and n < 15) or self.final_sigmas_type == "zero"
        )
        if self.solver_order == 1 or st.lower_order_nums < 1 or last_first_order:
            out = self._first_order(x, i)
        else:
            out = self._second_order(x, i)
        st.lower_order_nums = min(st.lower_order_nums + 1, self.solver_order)
        return out

    def _first_order(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x_t = (sigma_t / sigma_s) x + alpha_t (1 - e^{-h}) x0  (DDIM in flow space)."""
        s, t = self._sig[i], self._sig[i + 1]
        h = log_snr(t) - log_snr(s)
        return (t / s) * x + ((1.0 - t) * -math.expm1(-h)) * self.state.x0_history[-1]

    def _second_order(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Multistep second order from the x0 predictions at sigmas[i] (m0) and sigmas[i - 1] (m1)."""
        s1, s0, t = self._sig[i - 1], self._sig[i], self._sig[i + 1]
        lam_s0 = log_snr(s0)
        h = log_snr(t) - lam_s0
        h_0 = lam_s0 - log_snr(s1)
        m1, m0 = self.state.x0_history[-2], self.state.x0_history[-1]
        inv_r0 = h / h_0  # 1 / r0; 0 when the previous sigma was 1 (h_0 = inf)
        alpha_t = 1.0 - t
        em1 = math.expm1(-h)  # e^{-h} - 1
        if self.solver_type == "midpoint":
            d1_coef = -0.5 * alpha_t * em1
        else:  # heun
            d1_coef = alpha_t * (em1 / h + 1.0)
        d1 = (m0 - m1) * inv_r0
        return (t / s0) * x - (alpha_t * em1) * m0 + d1_coef * d1
