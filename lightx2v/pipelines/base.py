"""The denoising loop, written once (DESIGN principle 7), and the result of a generation.

    for each timestep t (step i of n):
        ctx = StepContext(i, n, t, branch, expert)    # expert: the pipeline's choice for this step (MoE)
        v = guidance(model_fn, x, t, cond, uncond, ctx)   # model_fn(x, t, cond, ctx) once or more
        x = scheduler.step(v, x)
        x = after_step(i, x)                          # optional: latents the condition fixes, re-imposed
        callback(StepInfo) -> False stops the run

The loop does not know how the model is run (precision, attention kernel, offload, cache): those
are transforms applied to the model before. It passes a `StepContext` to the model function, so
that a cache can decide to skip and a two-expert pipeline can pick its expert, and a `Guidance`
object decides how the CFG branches run (none; two calls; one batch of 2; a scale per expert;
norm-rescaled). Latents stay float32 between steps, as the references keep them; a step that
leaves them NaN or infinite stops the run with a NonFiniteError naming the step.

Two hooks let a pipeline shape a run without a loop of its own: `expert_for(step, t)` names the
expert of each step (a two-expert model: Wan2.2 A14B's high / low noise DiTs), and
`after_step(step, latents) -> latents` edits the latents after each scheduler step, before the
callback sees them (Wan2.2 TI2V image-to-video re-imposes the image's clean latent frame there, as
the official textimage2video.py does after every step).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from lightx2v.errors import GenerationCancelled, NonFiniteError  # GenerationCancelled re-exported: the loop raises it


@dataclass(frozen=True)
class StepInfo:
    """What a per-step callback is given."""

    step: int                 # 0-based index of the step just finished
    num_steps: int
    timestep: float
    latents: torch.Tensor     # [1, C, T', H', W'] float32, after this step


@dataclass(frozen=True)
class StepContext:
    """What the model function knows about the call it is making.

    branch: "cond" | "uncond" (one CFG branch) or "cfg" (both, batched [cond, uncond]);
    expert: the expert the pipeline chose for this step (None for one-expert models)."""

    step: int
    num_steps: int
    timestep: float
    branch: str = "cond"
    expert: Optional[str] = None


@dataclass
class GenerationResult:
    """frames: float32 [F, H, W, 3] in [0, 1] (None for output_type 'latent'); path: the file written.

    images (image models, and output_type "pil"): a list of PIL images, or for output_type "np" / "pt"
    float32 [N, H, W, 3] in [0, 1] (the same array as `frames`, N images); paths: every file written
    (N images: out_0.png ... out_{N-1}.png; `path` is the first).

    stats: counters of the run: `model_calls` (DiT forwards run; a batched CFG pair counts as one
    forward of batch 2), `model_samples` (samples through the DiT); with a feature cache
    (lightx2v.runtime.cache) `model_calls` counts the forwards whose block stack ran,
    `model_calls_skipped` those answered from the cache (and timings["cache_decide"] the seconds deciding)."""

    frames: Any = None
    path: Optional[str] = None
    latents: Optional[torch.Tensor] = None
    seed: Optional[int] = None
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    images: Any = None
    paths: Optional[list] = None


ModelFn = Callable[[torch.Tensor, torch.Tensor, Any, StepContext], torch.Tensor]


class Counter:
    """Counts what the loop asks of the model (GenerationResult.stats)."""

    def __init__(self, model_fn: ModelFn) -> None:
        self.model_fn = model_fn
        self.calls = 0
        self.samples = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any, ctx: StepContext) -> torch.Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        return self.model_fn(x, t, cond, ctx)

    def stats(self) -> dict:
        return {"model_calls": self.calls, "model_samples": self.samples}


@dataclass(frozen=True)
class Guidance:
    """How the CFG branches run and combine: v = v_u + g (v_c - v_u), g per expert.

    scale: the guidance scale; scales: {expert: scale} for two-expert models (a missing expert takes
    `scale`); mode: "sequential" (two calls of batch 1, as the references) or "batched" (one call of
    batch 2: cond and uncond concatenated; needs conditions with `cat_batch`) or "parallel" (one
    branch on each of the two ranks of `group`, joined by one all-gather: lightx2v.runtime.parallel.cfg);
    rescale: phi of norm-rescaled CFG (Lin et al. 2023; 0 = off). With scale 1 (or no uncond) one call is made.
    """

    scale: float = 1.0
    scales: Optional[Mapping[str, float]] = None
    mode: str = "sequential"
    rescale: float = 0.0
    # mode "parallel": the CFG process group (2 ranks: cond on its rank 0, uncond on its rank 1)
    group: Any = field(default=None, compare=False, repr=False)
    # batched: the two branches' conditions joined once per generation (the same objects at every
    # step, which also lets the DiT keep their cross-attention K/V: lightx2v.runtime.context_kv)
    _joined: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("sequential", "batched", "parallel"):
            raise ValueError(f"guidance mode must be 'sequential', 'batched' or 'parallel', got {self.mode!r}")
        if (self.mode == "parallel") != (self.group is not None):
            raise ValueError("guidance mode 'parallel' needs its CFG process group (and only it takes one)")

    def _join(self, cond: Any, uncond: Any) -> Any:
        if not (self._joined and self._joined[0] is cond and self._joined[1] is uncond):
            self._joined[:] = [cond, uncond, cond.cat_batch(uncond)]
        return self._joined[2]

    def scale_for(self, ctx: StepContext) -> float:
        if self.scales is not None and ctx.expert in self.scales:
            return float(self.scales[ctx.expert])
        return float(self.scale)

    def __call__(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any,
                 ctx: StepContext) -> torch.Tensor:
        g = self.scale_for(ctx)
        if uncond is None or g == 1.0:
            return model_fn(x, t, cond, ctx).float()  # combine in float32, whatever the model's dtype
        v, v_u = self.branches(model_fn, x, t, cond, uncond, ctx)
        return self.combine(v, v_u, g)

    def branches(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any,
                 ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_cond, v_uncond) float32, run as `mode` says (under "parallel" each rank gets both)."""
        if self.mode == "batched":
            v2 = model_fn(torch.cat([x, x]), t.expand(2 * x.shape[0]), self._join(cond, uncond),
                          replace(ctx, branch="cfg")).float()
            v, v_u = v2.chunk(2)
        elif self.mode == "parallel":  # one branch per rank, one all-gather (lightx2v.runtime.parallel.cfg)
            from lightx2v.runtime.parallel.cfg import both_branches

            v, v_u = both_branches(model_fn, x, t, cond, uncond, ctx, self.group)
        else:
            v = model_fn(x, t, cond, ctx).float()
            v_u = model_fn(x, t, uncond, replace(ctx, branch="uncond")).float()
        return v, v_u

    def combine(self, v: torch.Tensor, v_u: torch.Tensor, g: float) -> torch.Tensor:
        """The guided velocity from both branches' (float32): what a subclass's rescale overrides."""
        out = v_u + g * (v - v_u)
        if self.rescale > 0:
            dims = tuple(range(1, out.ndim))
            rescaled = out * (v.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
            out = self.rescale * rescaled + (1 - self.rescale) * out
        return out


def denoise(
    model_fn: ModelFn,
    scheduler,
    latents: torch.Tensor,
    cond: Any,
    uncond: Any,
    guidance: Guidance,
    *,
    expert_for: Optional[Callable[[int, float], Optional[str]]] = None,
    after_step: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
    callback: Optional[Callable[[StepInfo], Optional[bool]]] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run the scheduler's timesteps over `latents` (float32); returns the final latents.

    expert_for(step, timestep) -> the expert for that step (two-expert models), passed in the context;
    after_step(step, latents) -> the latents to continue from (see the module docstring)."""
    from tqdm.auto import tqdm

    timesteps = scheduler.timesteps
    n = len(timesteps)
    for i, t in enumerate(tqdm(timesteps, desc="denoise", disable=not progress, leave=False)):
        tt = t.reshape(1).to(latents.device)
        ctx = StepContext(step=i, num_steps=n, timestep=float(t),
                          expert=None if expert_for is None else expert_for(i, float(t)))
        v = guidance(model_fn, latents, tt, cond, uncond, ctx)
        latents = scheduler.step(v, latents)
        if after_step is not None:
            latents = after_step(i, latents)
        if not bool(torch.isfinite(latents).all()):  # one reduction a step; NaN would spread to every pixel
            raise NonFiniteError(
                f"denoise step {i + 1} of {n} (timestep {float(t):.0f}) produced {nonfinite_kind(latents)} latents: "
                "the model overflowed; try a lower guidance scale or LoRA strength, or dtype bf16 / fp32 instead of fp16")
        if callback is not None and callback(StepInfo(i, n, float(t), latents)) is False:
            raise GenerationCancelled(f"stopped by the callback after step {i + 1} of {n}; nothing was written")
    return latents


def nonfinite_kind(x: torch.Tensor) -> str:
    """'NaN', 'infinite' or 'NaN and infinite': what a tensor that is not all finite holds."""
    nan, inf = bool(torch.isnan(x).any()), bool(torch.isinf(x).any())
    return "NaN and infinite" if nan and inf else ("NaN" if nan else "infinite")


def video_to_unit(video: torch.Tensor) -> torch.Tensor:
    """VAE output [1, 3, F, H, W] in [-1, 1] -> float32 [3, F, H, W] in [0, 1], where the video is."""
    return (video[0].float() / 2 + 0.5).clamp(0, 1)


def video_to_frames(video: torch.Tensor, unit: torch.Tensor | None = None) -> np.ndarray:
    """VAE output [1, 3, F, H, W] in [-1, 1] (or its `video_to_unit`) -> float32 numpy [F, H, W, 3] in [0, 1]."""
    v = video_to_unit(video) if unit is None else unit
    return v.permute(1, 2, 3, 0).cpu().numpy()


def video_to_uint8(video: torch.Tensor, unit: torch.Tensor | None = None) -> np.ndarray:
    """VAE output [1, 3, F, H, W] in [-1, 1] -> uint8 numpy [F, H, W, 3], what an encoder takes: the
    same float32 arithmetic as `lightx2v.io.video.to_uint8(video_to_frames(video))` (rounded, bit for
    bit), done where the video is (on the GPU: a quarter of the bytes cross to the host, and the
    host's numpy conversion, 1.3 s at 480P x 81 frames on 2 cores, is gone)."""
    return video_to_uint8_tensor(video, unit).cpu().numpy()


def video_to_uint8_tensor(video: torch.Tensor, unit: torch.Tensor | None = None) -> torch.Tensor:
    """`video_to_uint8` left on the video's device: uint8 [F, H, W, 3] (a chunk of frames for the
    streamed save, lightx2v.io.stream)."""
    v = (video_to_unit(video) if unit is None else unit) * 255.0 + 0.5
    return v.to(torch.uint8).permute(1, 2, 3, 0).contiguous()
