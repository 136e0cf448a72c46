"""MagCache for Wan2.1 (Ma et al. 2025; Zehong-Ma/MagCache, MagCache4Wan2.1/magcache_generate.py).

Rule, per CFG branch (cond reads the published cond ratios, uncond the uncond ones):
    steps < int(n * retention) always run;
    otherwise ratio *= r[step] (the published mean magnitude ratio of the block stack's residual at
    this step to the previous one), skips += 1, err += |1 - ratio|; the block stack is skipped while
    err < threshold and skips <= max_skips (K), and runs (ratio := 1, skips := 0, err := 0) otherwise.
    A skipped call adds the residual its branch stored when it last ran.
The ratios are a per-model, per-step table measured by the authors (50 steps for T2V, 40 for I2V);
another step count takes them by nearest-index interpolation, as the reference does. The retention
window counts steps, as LightX2V's WanTransformerInferMagCaching does (the reference counts calls,
cond and uncond interleaved: the same window whenever 2 * n * retention is even, e.g. 50 x 0.2).
The decision reads host numbers only: no device sync. The numbers' sources: docs/caching.md.
"""

from __future__ import annotations

from lightx2v.errors import InputError
from lightx2v.runtime.cache.base import BranchInputs, BranchState, CacheMethod, Decision

# coefficient set -> ((cond ratios), (uncond ratios)), one per step (the first is the reference's
# padding, 1.0); de-interleaved from MagCache4Wan2.1/magcache_generate.py (Zehong-Ma/MagCache df81cb1),
# the same numbers as ModelTC/LightX2V configs/caching/magcache/*.json (where present)
RATIOS = {
    "t2v-14b": (
        (  # cond
        1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533,
        0.99468, 0.99438, 0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418,
        0.99271, 0.99313, 0.99215, 0.99218, 0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887,
        0.98772, 0.98767, 0.98573, 0.98501, 0.9838, 0.98177, 0.98037, 0.97678, 0.97546, 0.97184,
        0.96711, 0.96349, 0.95629, 0.94926, 0.93964, 0.92511, 0.90693, 0.8796, 0.86111),
        (  # uncond
        1.0, 1.03017, 1.00251, 0.99962, 0.99771, 0.99658, 0.99476, 0.99451, 0.99656, 0.99431, 0.99545,
        0.99465, 0.99434, 0.99517, 0.9938, 0.99401, 0.99516, 0.99408, 0.99426, 0.99343, 0.99416,
        0.99269, 0.99311, 0.99215, 0.99215, 0.99217, 0.99161, 0.99135, 0.9898, 0.98995, 0.98866, 0.9877,
        0.98765, 0.9857, 0.98498, 0.98376, 0.98173, 0.98035, 0.97677, 0.97543, 0.97183, 0.96708,
        0.96345, 0.95625, 0.94929, 0.93961, 0.92504, 0.90678, 0.87945, 0.86189),
    ),
    "t2v-1.3b": (
        (  # cond
        1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511,
        0.99535, 0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419,
        0.99396, 0.99388, 0.99349, 0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005,
        0.98944, 0.98849, 0.98758, 0.98644, 0.98504, 0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003,
        0.96538, 0.9593, 0.95086, 0.94013, 0.92402, 0.90241, 0.86821, 0.81838),
        (  # uncond
        1.0, 1.02213, 1.0041, 1.00061, 0.99762, 0.99685, 0.99586, 0.99422, 0.99575, 0.99563, 0.99506,
        0.99531, 0.99549, 0.99539, 0.99536, 0.99485, 0.99514, 0.99478, 0.99479, 0.99413, 0.99416,
        0.99393, 0.99386, 0.99349, 0.99304, 0.9927, 0.99226, 0.9917, 0.99135, 0.99063, 0.99003, 0.98942,
        0.98849, 0.98757, 0.98643, 0.98503, 0.98359, 0.98201, 0.97978, 0.97718, 0.97411, 0.97002,
        0.96541, 0.95933, 0.95089, 0.94019, 0.92414, 0.9026, 0.86868, 0.81939),
    ),
    "i2v-480p": (
        (  # cond
        1.0, 0.98783, 0.97559, 0.98311, 0.98202, 0.9888, 0.98762, 0.98957, 0.99052, 0.99383, 0.98857,
        0.99065, 0.98845, 0.99057, 0.98957, 0.98601, 0.98823, 0.98756, 0.98808, 0.98721, 0.98571,
        0.98543, 0.98157, 0.98411, 0.97952, 0.98149, 0.9774, 0.97825, 0.97355, 0.97085, 0.97056,
        0.96588, 0.96113, 0.9567, 0.94961, 0.93973, 0.93217, 0.91878, 0.90955, 0.92617),
        (  # uncond
        1.0, 0.98993, 0.97593, 0.98319, 0.98225, 0.98878, 0.98759, 0.98971, 0.99043, 0.99384, 0.9886,
        0.99068, 0.98847, 0.99057, 0.98961, 0.9861, 0.98823, 0.98759, 0.98814, 0.98724, 0.98572,
        0.98544, 0.98165, 0.98413, 0.97953, 0.9815, 0.97742, 0.97826, 0.97361, 0.97087, 0.97055,
        0.96587, 0.96124, 0.95681, 0.94969, 0.93988, 0.93224, 0.91896, 0.90954, 0.92616),
    ),
    "i2v-720p": (
        (  # cond
        1.0, 0.99428, 0.98588, 0.98273, 0.99018, 0.98911, 0.98646, 0.99454, 0.9891, 0.99124, 0.99102,
        0.99215, 0.99515, 0.99576, 0.99068, 0.99097, 0.99166, 0.99041, 0.99201, 0.99101, 0.98599,
        0.98845, 0.98848, 0.98862, 0.98718, 0.98497, 0.98264, 0.98389, 0.97938, 0.97535, 0.97498, 0.973,
        0.96827, 0.96261, 0.95335, 0.94649, 0.93397, 0.91636, 0.89088, 0.8679),
        (  # uncond
        1.0, 0.99498, 0.98621, 0.98281, 0.99023, 0.98917, 0.98652, 0.99456, 0.98909, 0.99127, 0.99103,
        0.99212, 0.99515, 0.99572, 0.99072, 0.99097, 0.99169, 0.99042, 0.99198, 0.99101, 0.98603,
        0.98844, 0.98851, 0.98857, 0.98719, 0.98497, 0.98263, 0.98393, 0.9794, 0.97536, 0.97499,
        0.97301, 0.96828, 0.96263, 0.9534, 0.94655, 0.93414, 0.9165, 0.89109, 0.86768),
    ),
}
# -- hunyuanvideo-1.5 (issue 17): ModelTC/LightX2V configs/hunyuan_video_15/cache/hy_15_i2v_480p_magcache.json
# (`magcache_ratios` [cond, uncond], 50 steps; magcache_thresh 0.24, magcache_K 6, retention 0.2), the same
# rule (HunyuanVideo15TransformerInferMagCaching). No other HunyuanVideo-1.5 ratios are published.
RATIOS["hy15-i2v-480p"] = (
    (1.0, 1.01562, 1.00781, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.99609, 1.0, 0.99609, 1.0, 0.99609, 1.0,
     0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609,
     0.99609, 0.99609, 0.99219, 0.99219, 0.99219, 0.98828, 0.98828, 0.98828, 0.98828, 0.98438, 0.98438, 0.98047,
     0.98047, 0.97656, 0.97266, 0.96484, 0.95703, 0.94922, 0.92969, 0.91016, 0.88672),
    (1.0, 1.02344, 1.00781, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.99609, 1.0, 0.99609, 1.0, 0.99609, 1.0,
     0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609, 0.99609,
     0.99609, 0.99609, 0.99219, 0.99219, 0.99219, 0.99219, 0.98828, 0.98828, 0.98828, 0.98438, 0.98438, 0.98047,
     0.98047, 0.97656, 0.97266, 0.96484, 0.95703, 0.94922, 0.93359, 0.91016, 0.88672),
)
# -- end hunyuanvideo-1.5

# defaults per set: (threshold, max_skips K, retention ratio), the commands of MagCache4Wan2.1/README.md
DEFAULTS = {
    "t2v-1.3b": (0.12, 4, 0.2), "t2v-14b": (0.24, 6, 0.2), "i2v-480p": (0.24, 6, 0.2), "i2v-720p": (0.24, 6, 0.2),
    "hy15-i2v-480p": (0.24, 6, 0.2),  # hunyuanvideo-1.5: LightX2V's hy_15_i2v_480p_magcache.json
}


def nearest_ratios(ratios, n: int) -> tuple[float, ...]:
    """`ratios` resampled to n steps by the nearest index (round half to even, as numpy.round)."""
    if n == len(ratios):
        return tuple(ratios)
    if n == 1:
        return (ratios[-1],)
    scale = (len(ratios) - 1) / (n - 1)
    return tuple(ratios[int(round(i * scale))] for i in range(n))


class MagCache(CacheMethod):
    name = "magcache"

    def __init__(self, model: str, threshold: float | None = None, max_skips: int | None = None,
                 retention: float | None = None) -> None:
        if model not in RATIOS:
            raise InputError(f"magcache has no published ratios named {model!r}; expected one of {', '.join(RATIOS)}",
                             field="cache")
        t, k, r = DEFAULTS[model]
        self.model = model
        self.threshold = t if threshold is None else float(threshold)
        self.max_skips = k if max_skips is None else int(max_skips)
        self.retention = r if retention is None else float(retention)
        self._resampled: dict[int, tuple] = {}

    @property
    def off(self) -> bool:
        return self.threshold == 0 or self.max_skips == 0

    def describe(self) -> str:
        return (f"magcache (threshold {self.threshold:g}, max_skips {self.max_skips}, retention {self.retention:g}, "
                f"ratios {self.model})")

    def ratios(self, branch: str, num_steps: int) -> tuple[float, ...]:
        if num_steps not in self._resampled:
            self._resampled[num_steps] = tuple(nearest_ratios(r, num_steps) for r in RATIOS[self.model])
        return self._resampled[num_steps][0 if branch == "cond" else 1]

    def decide(self, state: BranchState, step: int, num_steps: int, inputs: BranchInputs) -> Decision:
        if step < int(num_steps * self.retention):
            return Decision(True)
        v = state.vars
        ratio = v.get("ratio", 1.0) * self.ratios(state.branch, num_steps)[step]
        skips = v.get("skips", 0) + 1
        err = v.get("err", 0.0) + abs(1.0 - ratio)
        return Decision(not (err < self.threshold and skips <= self.max_skips),
                        {"ratio": ratio, "skips": skips, "err": err})

    def commit(self, state: BranchState, decision: Decision, ran: bool) -> None:
        if ran:
            state.vars.update(ratio=1.0, skips=0, err=0.0)
        else:
            state.vars.update(decision.update)
