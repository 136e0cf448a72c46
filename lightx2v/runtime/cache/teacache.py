"""TeaCache for Wan2.1 (Liu et al. 2024; ali-vilab/TeaCache, TeaCache4Wan2.1/teacache_generate.py).

Rule, per CFG branch (each its own accumulator and previous indicator):
    steps [0, ret) and [cutoff, n) always run (accumulator := 0);
    otherwise acc += poly(rel_l1(indicator, previous indicator)), where rel_l1 = mean|a - b| / mean|b|
    and poly is the published 4th-degree rescaling polynomial of the model; the block stack is skipped
    while acc < threshold, and runs (acc := 0) once it reaches it. The previous indicator is updated
    at every call, run or skipped. A skipped call adds the residual its branch stored when it last ran.
The indicator, in the Wan2.1 reference, is a timestep embedding (what the general TeaCache rule calls
the modulated input): `e`, the time embedding [B, C] (ret = 1, cutoff = n - 1: the first and last
steps run), or with `ret_steps` ("use_ret_steps") `e0`, the time projection [B, 6, C] that modulates
every block (ret = 5, cutoff = n: the first five steps run, the last may be skipped). The
polynomials were fit on those, so those are what is measured here (WanModel passes both to its
block runner). Each needs one device->host copy of a scalar per branch and call (a sync; measured
by benchmarks/cache.py). Threshold 0 runs every forward (with some published polynomials the
rescaled distance is negative for small changes, which the reference would skip on even at 0).
The numbers and their sources are listed in docs/caching.md.
"""

from __future__ import annotations

from lightx2v.errors import InputError
from lightx2v.runtime.cache.base import BranchInputs, BranchState, CacheMethod, Decision, rel_l1

# coefficient set -> (polynomial on e0 (use_ret_steps), polynomial on e), highest degree first
# (numpy.poly1d order), from TeaCache4Wan2.1/teacache_generate.py (ali-vilab/TeaCache 7c10efc)
COEFFICIENTS = {
    "t2v-1.3b": ((-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
                 (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01)),
    "t2v-14b": ((-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
                (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404)),
    "i2v-480p": ((2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
                 (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01)),
    "i2v-720p": ((8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
                 (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683)),
}
# -- hunyuanvideo-1.5 (issue 17) --------------------------------------------------------------------
# ModelTC/LightX2V configs/hunyuan_video_15/cache/hy_15_{t2v,i2v}_{480p,720p}_teacache.json (`coefficients`,
# `teacache_thresh` 0.15), measured by its HunyuanTransformerInferTeaCaching on block 0's modulated image
# input (the DiT passes it as `e0`: HunyuanVideo15DiT.cache_indicator), with steps 0 and n - 1 always run
# (the `e` window). One polynomial per set: both slots hold it; `ret_steps` has no published variant.
HY15 = {
    "hy15-t2v-480p": (-2.97190924e04, 2.22834983e04, -4.37418360e03, 3.39340251e02, -1.01365855e01, 1.29101768e-01),
    "hy15-t2v-720p": (-3.08907507e04, 1.67786188e04, -3.19178643e03, 2.60740519e02, -8.19205881e00, 1.07913775e-01),
    "hy15-i2v-480p": (8.08528429e03, -2.44607178e03, 2.49489589e02, -9.10697865e00, 1.20261379e-01),
    "hy15-i2v-720p": (3.84300014e03, -1.39247433e03, 1.69167679e02, -7.07679232e00, 1.02419011e-01),
}
COEFFICIENTS.update({name: (poly, poly) for name, poly in HY15.items()})
# -- end hunyuanvideo-1.5 ----------------------------------------------------------------------------

# default threshold per set and variant: the "slow" (quality) column of TeaCache4Wan2.1/README.md's
# use_ret_steps tables; ret_steps is on by default except for t2v-1.3b (the README: faster and better
# "except for t2v-1.3B")
THRESHOLDS = {  # set: (with ret_steps, without)
    "t2v-1.3b": (0.05, 0.05), "t2v-14b": (0.10, 0.14), "i2v-480p": (0.20, 0.13), "i2v-720p": (0.20, 0.20),
}
THRESHOLDS.update({name: (0.15, 0.15) for name in HY15})  # LightX2V's teacache_thresh (hunyuanvideo-1.5)


def polyval(coefficients, x: float) -> float:
    """coefficients[0] x^d + ... + coefficients[d] (Horner; numpy.poly1d's order)."""
    out = 0.0
    for c in coefficients:
        out = out * x + c
    return out


class TeaCache(CacheMethod):
    host_sync = True  # rel_l1 reads its number off the device
    name = "teacache"

    def __init__(self, model: str, threshold: float | None = None, ret_steps: bool | None = None) -> None:
        if model not in COEFFICIENTS:
            raise InputError(f"teacache has no published coefficients named {model!r}; expected one of "
                             f"{', '.join(COEFFICIENTS)}", field="cache")
        self.model = model
        if model in HY15 and ret_steps:
            raise InputError(f"teacache: LightX2V publishes no ret_steps coefficients for {model}; drop ret_steps",
                             field="cache")
        self.ret_steps = (model != "t2v-1.3b" and model not in HY15) if ret_steps is None else bool(ret_steps)
        self.coefficients = COEFFICIENTS[model][0 if self.ret_steps else 1]
        self.threshold = THRESHOLDS[model][0 if self.ret_steps else 1] if threshold is None else float(threshold)

    @property
    def off(self) -> bool:
        return self.threshold == 0

    def describe(self) -> str:
        what = "modulated input" if self.model in HY15 else "ret_steps: e0" if self.ret_steps else "e"
        return f"teacache (threshold {self.threshold:g}, coefficients {self.model}, {what})"

    def window(self, num_steps: int) -> tuple[int, int]:
        """(ret, cutoff): steps < ret and >= cutoff always run."""
        return (5, num_steps) if self.ret_steps else (1, num_steps - 1)

    def decide(self, state: BranchState, step: int, num_steps: int, inputs: BranchInputs) -> Decision:
        indicator = inputs.e0 if self.ret_steps or self.model in HY15 else inputs.e
        ret, cutoff = self.window(num_steps)
        previous = state.vars.get("previous")
        if step < ret or step >= cutoff or previous is None:
            return Decision(True, {"acc": 0.0, "previous": indicator})
        acc = state.vars.get("acc", 0.0) + polyval(self.coefficients, rel_l1(indicator, previous))
        return Decision(acc >= self.threshold, {"acc": acc, "previous": indicator})

    def commit(self, state: BranchState, decision: Decision, ran: bool) -> None:
        state.vars.update(decision.update)
        if ran:
            state.vars["acc"] = 0.0
