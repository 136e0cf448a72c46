"""Wan2.2 presets: model sizes, the official sampling defaults, the expert boundaries.

From the official configs (Wan-Video/Wan2.2 `wan/configs/wan_{t2v_A14B,i2v_A14B,ti2v_5B}.py`):

| task | steps | sample_guide_scale (low, high) | shift | boundary | fps | frames |
| t2v  | 40    | (3.0, 4.0)                     | 12.0  | 0.875    | 16  | 81     |
| i2v  | 40    | (3.5, 3.5)                     | 5.0   | 0.900    | 16  | 81     |
| ti2v | 50    | 5.0 (one DiT)                  | 5.0   | -        | 24  | 121    |

The official tuple is (LOW-noise, HIGH-noise); ours is named: `guidance_scale` is the high-noise
expert's (the first DiT, "dit"; diffusers' `guidance_scale`), `guidance_scale_2` the low-noise
expert's ("dit_2"; diffusers' `guidance_scale_2`). The solver is UniPC and the negative prompt
Wan2.1's (shared_config.py is byte-identical).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

from lightx2v.config import SamplingDefaults
from lightx2v.models.wan.presets import DEFAULT_NEGATIVE_PROMPT


@dataclass(frozen=True)
class OfficialSampling:
    steps: int
    guidance_high: float
    guidance_low: Optional[float]   # None: one DiT (TI2V-5B)
    shift: float
    fps: int
    boundary: Optional[float]       # fraction of num_train_timesteps where the low-noise expert takes over
    frames: int = 81
    size: tuple[int, int] = (720, 1280)   # (height, width): the official generate.py's default --size 1280*720


OFFICIAL: Mapping[str, OfficialSampling] = {
    "t2v": OfficialSampling(steps=40, guidance_high=4.0, guidance_low=3.0, shift=12.0, fps=16, boundary=0.875),
    "i2v": OfficialSampling(steps=40, guidance_high=3.5, guidance_low=3.5, shift=5.0, fps=16, boundary=0.900),
    "ti2v": OfficialSampling(steps=50, guidance_high=5.0, guidance_low=None, shift=5.0, fps=24, boundary=None,
                             frames=121, size=(704, 1280)),
}

# (dim, num_layers, num_heads, ffn_dim) -> name (each A14B expert is a 14B DiT)
SIZES = {
    (5120, 40, 40, 13824): "A14B",
    (3072, 30, 24, 14336): "5B",
}

# the sizes each task was trained for (wan/configs/__init__.py SUPPORTED_SIZES), as (height, width)
TRAINED_SIZES = {
    "t2v": ((720, 1280), (1280, 720), (480, 832), (832, 480)),
    "i2v": ((720, 1280), (1280, 720), (480, 832), (832, 480)),
    "ti2v": ((704, 1280), (1280, 704)),
}


def size_name(dit) -> str:
    """'A14B', '5B' or 'custom (dim D, L layers)' for a WanDiTConfig."""
    key = (dit.dim, dit.num_layers, dit.num_heads, dit.ffn_dim)
    return SIZES.get(key, f"custom (dim {dit.dim}, {dit.num_layers} layers)")


def official_defaults(task: str) -> SamplingDefaults:
    """The official generate.py's defaults for this checkpoint kind (see the module docstring)."""
    o = OFFICIAL[task]
    return SamplingDefaults(
        num_inference_steps=o.steps, guidance_scale=o.guidance_high, guidance_scale_2=o.guidance_low,
        shift=o.shift, solver="unipc", convention="official", scheduler_config=None,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT, fps=o.fps, area_shift=None,
        height=o.size[0], width=o.size[1], num_frames=o.frames,
    )


def diffusers_defaults(task: str, scheduler_config: Mapping) -> SamplingDefaults:
    """A diffusers folder: its scheduler config decides solver and shift (as for Wan2.1: the
    published A14B configs say flow_shift 3.0, not the official 12 / 5); steps, the guidance pair
    and fps are the official ones (diffusers' own call defaults, 50 steps and 5.0 for both experts,
    are not the model's)."""
    from lightx2v.models.wan.presets import diffusers_defaults as wan21_diffusers_defaults

    o = OFFICIAL[task]
    base = wan21_diffusers_defaults(task, None, dict(scheduler_config))
    return dataclasses.replace(base, num_inference_steps=o.steps, guidance_scale=o.guidance_high,
                               guidance_scale_2=o.guidance_low, fps=o.fps, height=o.size[0], width=o.size[1],
                               num_frames=o.frames)
