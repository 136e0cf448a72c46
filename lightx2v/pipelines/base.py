"""The denoising loop, written once (DESIGN principle 7), and the result of a generation.

    for each timestep t:
        v = model(x, t, cond)                         # conditional prediction
        if CFG: v = v_u + g * (v - v_u)               # v_u = model(x, t, uncond)
        x = scheduler.step(v, x)
        callback(StepInfo) -> False stops the run

The loop does not know how the model is run (precision, attention kernel, offload, cache): those
are transforms applied to the model before. Latents stay float32 between steps, as the
references keep them; the model is given them in its own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from lightx2v.errors import LightX2VError


class GenerationCancelled(LightX2VError):
    """The per-step callback asked to stop; nothing was written."""


@dataclass(frozen=True)
class StepInfo:
    """What a per-step callback is given."""

    step: int                 # 0-based index of the step just finished
    num_steps: int
    timestep: float
    latents: torch.Tensor     # [1, C, T', H', W'] float32, after this step


@dataclass
class GenerationResult:
    """frames: float32 [F, H, W, 3] in [0, 1] (None for output_type 'latent'); path: the mp4 written."""

    frames: Any = None
    path: Optional[str] = None
    latents: Optional[torch.Tensor] = None
    seed: Optional[int] = None
    timings: dict = field(default_factory=dict)


ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def guided(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_u + g (v_c - v_u); a single call when g == 1 or there is no uncond."""
    v = model_fn(x, t, cond).float()  # combine in float32, whatever the model's dtype
    if uncond is None or scale == 1.0:
        return v
    v_u = model_fn(x, t, uncond).float()
    return v_u + scale * (v - v_u)


def denoise(
    model_fn: ModelFn,
    scheduler,
    latents: torch.Tensor,
    cond: Any,
    uncond: Any,
    guidance_scale: float,
    *,
    callback: Optional[Callable[[StepInfo], Optional[bool]]] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run the scheduler's timesteps over `latents` (float32); returns the final latents."""
    from tqdm.auto import tqdm

    timesteps = scheduler.timesteps
    n = len(timesteps)
    for i, t in enumerate(tqdm(timesteps, desc="denoise", disable=not progress, leave=False)):
        tt = t.reshape(1).to(latents.device)
        v = guided(model_fn, latents, tt, cond, uncond, guidance_scale)
        latents = scheduler.step(v, latents)
        if callback is not None and callback(StepInfo(i, n, float(t), latents)) is False:
            raise GenerationCancelled(f"stopped by the callback after step {i + 1} of {n}; nothing was written")
    return latents


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """VAE output [1, 3, F, H, W] in [-1, 1] -> float32 numpy [F, H, W, 3] in [0, 1]."""
    v = (video[0].float() / 2 + 0.5).clamp(0, 1)
    return v.permute(1, 2, 3, 0).cpu().numpy()
