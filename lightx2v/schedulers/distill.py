"""Step-distilled sampling: the fixed timesteps a few-step model was distilled on, x0 then re-noise.

The sampler of LightX2V's 4-step Wan2.1 models (StepDistill + CfgDistill, DMD / Self-Forcing
training), as `WanStepDistillScheduler` in ModelTC/LightX2V
`lightx2v/models/schedulers/wan/step_distill/scheduler.py` does it:

Schedule. A table of T = num_train_timesteps training sigmas, linspace(1, 0, T + 1)[:-1] in float32
(1, 0.999, ..., 1/T), shifted by s' = shift * s / (1 + (shift - 1) * s) in float32. Denoising step
`d` of the list reads entry T - d (whose unshifted sigma is d / T); the DiT is given sigma * T as a
float, not truncated. The default list (1000, 750, 500, 250) at shift 5 gives the timesteps
1000, 937.5, 833.3333, 625. The number of steps is the length of the list and nothing else: the
model was trained at those timesteps only, so another count is an error.

Step i (float32, as the reference):
  x0 = x - sigma_i * v                                   (the model's clean prediction)
  x_{i+1} = x0 + sigma_{i+1} * v                         (renoise="predicted", the reference)
  x_{i+1} = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * eps   (renoise="fresh", eps ~ N(0, I))
and the last step returns x0 (final sigma 0). "predicted" re-noises x0 with the noise the model
implies (eps_hat = x0 + v), so it is deterministic and algebraically an Euler step from sigma_i
to sigma_{i+1}; it is what LightX2V does today. "fresh" is the LCM / Self-Forcing sampling that
earlier LightX2V versions used: it draws new noise from the scheduler's own `torch.Generator`
(seeded from the run's seed by the caller), so a seed still gives one video.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lightx2v.errors import LightX2VError
from lightx2v.schedulers.base import Scheduler, check_choice

DEFAULT_DENOISING_STEPS = (1000, 750, 500, 250)
RENOISE_MODES = ("predicted", "fresh")


def check_denoising_steps(steps: Sequence[int], num_train_timesteps: int) -> tuple[int, ...]:
    """The denoising steps as a tuple of ints: non-empty, strictly decreasing, within [1, T]."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or len(steps) == 0:
        raise LightX2VError(f"distill: denoising_steps must be a non-empty list of integers, got {steps!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in steps):
        raise LightX2VError(f"distill: denoising_steps must be integers, got {list(steps)!r}")
    out = tuple(int(s) for s in steps)
    if any(a <= b for a, b in zip(out, out[1:])):
        raise LightX2VError(f"distill: denoising_steps must be strictly decreasing, got {list(out)}")
    if out[0] > num_train_timesteps or out[-1] < 1:
        raise LightX2VError(f"distill: denoising_steps must lie in [1, {num_train_timesteps}], got {list(out)}")
    return out


class StepDistillScheduler(Scheduler):
    """Few-step sampler of step-distilled flow models; see the module docstring.

    `generator` is needed only for renoise="fresh"; its state at construction is where every
    run (after `set_timesteps` or `reset`) starts drawing, so a rerun repeats the noise.
    """

    name = "distill"

    def __init__(
        self,
        *,
        convention: str = "official",
        num_train_timesteps: int = 1000,
        denoising_steps: Sequence[int] = DEFAULT_DENOISING_STEPS,
        renoise: str = "predicted",
        generator: torch.Generator | None = None,
    ) -> None:
        # Both conventions sample the same way: the schedule comes from the distillation, not a library.
        super().__init__(convention=convention, num_train_timesteps=num_train_timesteps)
        self.denoising_steps = check_denoising_steps(denoising_steps, num_train_timesteps)
        check_choice("distill", "renoise", renoise, RENOISE_MODES)
        if renoise == "fresh" and not isinstance(generator, torch.Generator):
            raise LightX2VError("distill: renoise='fresh' needs a torch.Generator seeded from the run's seed")
        self.renoise = renoise
        self.generator = generator
        self._generator_start = generator.get_state() if generator is not None else None

    def __repr__(self) -> str:
        return f"StepDistillScheduler(steps={list(self.denoising_steps)}, renoise={self.renoise!r})"

    def set_timesteps(self, num_inference_steps: int, shift: float, device: torch.device | str | None = None) -> None:
        super().set_timesteps(num_inference_steps, shift, device)
        self._rewind_generator()

    def reset(self) -> None:
        super().reset()
        self._rewind_generator()

    def _rewind_generator(self) -> None:
        if self.generator is not None:
            self.generator.set_state(self._generator_start)

    def _schedule(self, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        steps = self.denoising_steps
        if n != len(steps):
            raise LightX2VError(
                f"solver 'distill' runs the {len(steps)} timesteps the model was distilled on "
                f"({', '.join(map(str, steps))}); num_inference_steps must be {len(steps)}, got {n}"
            )
        T = self.num_train_timesteps
        # float32 torch ops in the reference's order: the values match it bit for bit
        table = torch.linspace(1.0, 0.0, T + 1, dtype=torch.float32)[:-1]  # [T]
        table = shift * table / (1 + (shift - 1) * table)
        index = torch.tensor([T - d for d in steps])
        sigmas = torch.cat([table[index], torch.zeros(1)])  # [n + 1], final sigma 0
        timesteps = (table * T)[index]  # [n]
        return sigmas.numpy(), timesteps.numpy()

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        x0 = x - self._sig[i] * v  # x, v, x0: like the sample, float32
        if i == self.num_inference_steps - 1:
            return x0
        s_next = self._sig[i + 1]
        if self.renoise == "predicted":
            return x0 + s_next * v
        # fresh noise drawn where the generator lives (a CPU generator: the same on any device)
        eps = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32, device=self.generator.device)
        return (1 - s_next) * x0 + s_next * eps.to(x0.device)
