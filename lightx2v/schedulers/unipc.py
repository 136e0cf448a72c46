"""UniPC (Zhao et al. 2023, arXiv:2302.04867) multistep predictor-corrector in flow space.

The algorithm is that of the official Wan `FlowUniPCMultistepScheduler` and of diffusers'
`UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")` (the official
one is a copy of diffusers 0.31): data prediction (predict_x0), B(h) = expm1(-h) ("bh2") or -h
("bh1"), order p warmed up from 1, and lower order on the last steps. Each step i:
  1. x0_i = x_i - sigma_i * v_i                      (from the *uncorrected* sample)
  2. UniC: x_i <- corrected with x0_i, from the sample the previous predictor started at
  3. UniP: x_{i+1} from the corrected x_i and the last p x0 predictions
The two conventions differ only in the sigma schedule (see `base.py`):
  official:  shift(linspace(float32(0.999), 0)), e.g. timesteps 999, 899, 749, 499 at shift 3 / 4 steps
  diffusers: shift(linspace(1, 1/T)), first sigma 1 - 1e-6, e.g. 999, 900, 750, 500
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from lightx2v.errors import LightX2VError
from lightx2v.schedulers.base import (
    Scheduler,
    finish_schedule,
    check_choice,
    diffusers_unipc_sigmas,
    log_snr,
    wan_unipc_sigmas,
)


def _bh_b(hh: float, b_h: float, order: int) -> np.ndarray:
    """The right-hand side b [order] of UniPC's order conditions for the B(h) variant.

    With hh = -h: g_1 = expm1(hh) / hh - 1, g_{k+1} = g_k / hh - 1 / (k+1)!, b_k = g_k * k! / B(h)
    (g_k is the k-th phi function scaled so that it stays O(1) as h -> 0).
    """
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1
    b = []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.array(b, dtype=np.float64)


class UniPCScheduler(Scheduler):
    """Flow-matching UniPC; Wan's default solver. Options are diffusers' names and defaults."""

    name = "unipc"

    def __init__(
        self,
        *,
        convention: str = "official",
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Iterable[int] = (),
        final_sigmas_type: str = "zero",
    ) -> None:
        super().__init__(convention=convention, num_train_timesteps=num_train_timesteps)
        check_choice("unipc", "solver_order", solver_order, (1, 2, 3))
        check_choice("unipc", "solver_type", solver_type, ("bh1", "bh2"))
        check_choice("unipc", "lower_order_final", lower_order_final, (True, False))
        # the official code would fail on "sigma_min" (it reads alphas_cumprod, which it never sets)
        allowed_final = ("zero",) if convention == "official" else ("zero", "sigma_min")
        check_choice(f"unipc ({convention})", "final_sigmas_type", final_sigmas_type, allowed_final)
        if solver_order > 1 and not lower_order_final and final_sigmas_type == "zero":
            # a multistep predictor onto sigma 0 divides by r_k = 0 (the references return inf/nan)
            raise LightX2VError(
                "unipc: lower_order_final=False needs final_sigmas_type='sigma_min' when solver_order > 1"
            )
        self.solver_order = solver_order
        self.solver_type = solver_type
        self.lower_order_final = lower_order_final
        self.disable_corrector = frozenset(int(i) for i in disable_corrector)
        self.final_sigmas_type = final_sigmas_type

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        T = self.num_train_timesteps
        if self.convention == "official":
            sigmas = wan_unipc_sigmas(n, shift, T)
        else:
            sigmas = diffusers_unipc_sigmas(n, shift, T)
        final = 0.0 if self.final_sigmas_type == "zero" else float(sigmas[-1])
        return finish_schedule(sigmas, T, final)

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        st = self.state
        x0 = x - self._sig[i] * v  # x, v, x0: like the sample, float32
        if i > 0 and st.last_sample is not None and (i - 1) not in self.disable_corrector:
            # UniC: redo the step (i-1 -> i) with the new x0 as an extra point; history not yet pushed
            x = self._bh_step(st.last_sample, i - 1, st.last_order, x0_target=x0)
        self._push_x0(x0, self.solver_order)

        order = self.solver_order
        if self.lower_order_final:
            order = min(order, self.num_inference_steps - i)
        order = min(order, st.lower_order_nums + 1)  # warm-up: only as many points as we have

        st.last_sample, st.last_order = x, order
        out = self._bh_step(x, i, order, x0_target=None)  # UniP
        st.lower_order_nums = min(st.lower_order_nums + 1, self.solver_order)
        return out

    def _bh_step(self, x: torch.Tensor, j: int, order: int, x0_target: torch.Tensor | None) -> torch.Tensor:
        """B(h) update of `x` from sigmas[j] to sigmas[j + 1] with the newest x0 at index j.

        x0_history[-1 - k] is the x0 prediction at sigmas[j - k]. Predictor when `x0_target` is
        None; corrector (UniC) when it is the x0 prediction at sigmas[j + 1].
        """
        sig, hist = self._sig, self.state.x0_history
        s0, t = sig[j], sig[j + 1]
        if t == s0:  # final_sigmas_type="sigma_min" ends with a zero-length step: the references return x
            return x
        lam_s0 = log_snr(s0)
        h = log_snr(t) - lam_s0
        hh = -h  # data prediction works with -h
        b_h = math.expm1(hh) if self.solver_type == "bh2" else hh
        alpha_t = 1.0 - t

        m0 = hist[-1]
        out = (t / s0) * x - (alpha_t * math.expm1(hh)) * m0  # the order-1 (DDIM) part
        rks = [(log_snr(sig[j - k]) - lam_s0) / h for k in range(1, order)]
        d1s = [(hist[-1 - k] - m0) / rk for k, rk in enumerate(rks, start=1)]

        if x0_target is None:
            if order == 1:
                return out
            if order == 2:
                rhos = np.array([0.5])  # the references' simplified order-2 predictor
            else:
                rhos = _solve(rks, _bh_b(hh, b_h, order), full=False)
            res = sum(float(r) * d for r, d in zip(rhos, d1s))
        else:
            rhos = np.array([0.5]) if order == 1 else _solve(rks, _bh_b(hh, b_h, order), full=True)
            res = float(rhos[-1]) * (x0_target - m0)
            for r, d in zip(rhos[:-1], d1s):
                res = res + float(r) * d
        return out - (alpha_t * b_h) * res


def _solve(rks: list[float], b: np.ndarray, full: bool) -> np.ndarray:
    """rho from R rho = b with R[p, k] = r_k^p, r = (rks..., 1): [K + 1] when `full`, else [K].

    The corrector (full) uses all K + 1 points, its last one being the new x0; the predictor
    only the K previous ones: the leading K x K block of R and b. K = len(rks).
    """
    r = np.array(rks + [1.0], dtype=np.float64)
    R = np.stack([r**p for p in range(len(r))])  # [K + 1, K + 1]
    if full:
        return np.linalg.solve(R, b)
    k = len(rks)
    return np.linalg.solve(R[:k, :k], b[:k])
