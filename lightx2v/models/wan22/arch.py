"""`Wan22Arch`: the architecture of one Wan2.2 checkpoint (what `ModelConfig.arch` holds).

The experts (A14B): `dit` is the HIGH-noise expert (official `high_noise_model/`, diffusers
`transformer/`), `dit_2` the LOW-noise one (`low_noise_model/`, `transformer_2/`); TI2V-5B has
`dit` only. Which runs at a step (the pipeline's rule, `expert_at`):
- `switch_step` None (the official models): the high-noise expert while the scheduler's
  timestep t >= boundary * 1000 (inclusive, as the official code and diffusers), then the low one;
- `switch_step` k (LightX2V's 4-step distilled models, its `boundary_step_index`): the high-noise
  expert for steps 0 .. k-1, the low one from step k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from lightx2v.errors import CheckpointError

NUM_TRAIN_TIMESTEPS = 1000
EXPERTS = {"high": "dit", "low": "dit_2"}  # the StepContext expert name -> the component that runs it


def expert_label(mc: Any, name: str) -> str:
    """'high-noise expert' / 'low-noise expert' (A14B), 'DiT' (TI2V-5B), for messages."""
    if mc.arch.dit_2 is None:
        return "DiT"
    return {"dit": "high-noise expert", "dit_2": "low-noise expert"}[name]


@dataclass(frozen=True)
class Wan22Arch:
    dit: Any                          # WanDiTConfig: the high-noise expert (A14B) or the only DiT (TI2V-5B)
    dit_2: Optional[Any]              # WanDiTConfig: the low-noise expert; None for TI2V-5B
    vae: Any                          # WanVAEConfig (A14B: Wan2.1_VAE) | Wan22VAEConfig (TI2V-5B)
    text_encoder: Any                 # UMT5Config
    boundary: Optional[float]         # where the experts switch, a fraction of the 1000 training timesteps
    switch_step: Optional[int] = None  # distilled: the first step of the low-noise expert

    def __post_init__(self) -> None:
        if self.dit_2 is None:
            if self.boundary is not None or self.switch_step is not None:
                raise CheckpointError("a Wan2.2 model with one DiT has no expert boundary or switch step")
            return
        if self.boundary is None and self.switch_step is None:
            raise CheckpointError("a Wan2.2 model with two experts needs a boundary (or a switch step)")
        b = self.boundary
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
                              or not 0 < b < 1):
            raise CheckpointError(f"the expert boundary must be a number between 0 and 1 (exclusive), got {b!r}")
        s = self.switch_step
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise CheckpointError(f"the expert switch step must be an integer >= 1, got {s!r}")

    @property
    def boundary_timestep(self) -> Optional[float]:
        """boundary * 1000: the first timestep (from the top) that still runs the high-noise expert."""
        return None if self.boundary is None else self.boundary * NUM_TRAIN_TIMESTEPS

    def expert_at(self, step: int, timestep: float) -> str:
        """'high' (component "dit") or 'low' ("dit_2") for a step and its timestep (0 .. 1000);
        'high' throughout for a model with one DiT."""
        if self.dit_2 is None:
            return "high"
        if self.switch_step is not None:
            return "high" if step < self.switch_step else "low"
        return "high" if float(timestep) >= self.boundary_timestep else "low"
