"""TaylorSeer (Liu et al. 2025, "From Reusing to Forecasting"; diffusers' TaylorSeerCache,
hooks/taylorseer_cache.py; LightX2V's WanTransformerInferTaylorCaching).

Rule, per CFG branch, on the step index s counted from the first step the branch ran on this DiT
(so each expert of a two-expert model has its own warm-up): s < warmup runs; after it, the steps
with (s - warmup - 1) % interval == 0 run; the others forecast. diffusers' schedule and defaults
(interval 5, warmup 3, order 1). What is forecast is the block stack's residual R (its output minus
its input, the analogue of the per-module outputs the references forecast, which are residual
branches), so the forecast output is x + R(s): from the steps that ran, divided differences
F0 = R(s1), F(k+1) = (Fk(s1) - Fk(s0)) / (s1 - s0) up to `order` (1 or 2), and
R(s) = sum_k Fk (s - s1)^k / k!. No device sync; memory (order + 1) x [B, L, C] fp32 per branch.
interval 1 runs every forward.
"""

from __future__ import annotations

import math

from torch import Tensor

from lightx2v.runtime.cache.base import BranchInputs, BranchState, CacheMethod, Decision

DEFAULTS = {"interval": 5, "warmup": 3, "order": 1}


class TaylorSeer(CacheMethod):
    name = "taylorseer"

    def __init__(self, interval: int | None = None, warmup: int | None = None, order: int | None = None) -> None:
        self.interval = DEFAULTS["interval"] if interval is None else int(interval)
        self.warmup = DEFAULTS["warmup"] if warmup is None else int(warmup)
        self.order = DEFAULTS["order"] if order is None else int(order)

    @property
    def off(self) -> bool:
        return self.interval == 1

    def describe(self) -> str:
        return f"taylorseer (interval {self.interval}, warmup {self.warmup}, order {self.order})"

    def computes(self, s: int) -> bool:
        """Whether local step s runs the block stack (the schedule)."""
        return s < self.warmup or (s - self.warmup - 1) % self.interval == 0

    def decide(self, state: BranchState, step: int, num_steps: int, inputs: BranchInputs) -> Decision:
        return Decision(self.computes(step - state.origin))

    def store(self, state: BranchState, step: int, x_in: Tensor, x_out: Tensor) -> None:
        s = step - state.origin
        new = [x_out - x_in]  # [b, L, C] fp32
        old, last = (state.stored or (None, None))
        if old is not None:
            for k in range(self.order):
                if k >= len(old):
                    break
                new.append((new[k] - old[k]) / (s - last))
        state.stored = (new, s)

    def reuse(self, state: BranchState, step: int, x_in: Tensor) -> Tensor:
        factors, last = state.stored
        d = step - state.origin - last
        out = x_in + factors[0]
        for k in range(1, len(factors)):
            out = out + factors[k] * (d ** k / math.factorial(k))
        return out
