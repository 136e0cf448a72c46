"""Wan2.1 text-to-video: encode the prompt, denoise, decode, write.

The components are built and loaded by lightx2v.loading.components; this file only wires them
into the loop of pipelines/base.py and turns a `SamplingParams` into a `GenerationResult`.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.pipelines.base import GenerationResult, denoise, video_to_frames


class WanT2VPipeline:
    """Holds the loaded components of one Wan2.1 T2V checkpoint."""

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, tokenizer, vae,
                 vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        self.model_config = model_config
        self.engine = engine
        self.device = engine.torch_device()
        self.dit, self.text_encoder, self.tokenizer, self.vae = dit, text_encoder, tokenizer, vae
        self.vae_dtype = vae_dtype
        self.progress = progress

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "WanT2VPipeline":
        from lightx2v.loading import components as C

        device = engine.torch_device()
        return cls(
            mc, engine,
            dit=C.load_dit(mc, device, engine.dtype, engine.attention),
            text_encoder=C.load_text_encoder(mc, device, engine.dtype),
            tokenizer=C.load_tokenizer(mc),
            vae=C.load_vae(mc, device, torch.float32),
            progress=progress,
        )

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """-> [B, text_len, dim]: each prompt's states trimmed to its length, zero-padded (as the reference)."""
        from lightx2v.models.wan.t5 import encode_text

        ids, mask = self.tokenizer(prompts)
        states = encode_text(self.text_encoder, ids.to(self.device), mask.to(self.device))
        text_len = self.model_config.dit.text_len
        out = states[0].new_zeros(len(states), text_len, states[0].shape[-1])
        for i, s in enumerate(states):
            out[i, : s.shape[0]] = s
        return out

    def make_scheduler(self, p: SamplingParams):
        from lightx2v.schedulers import make_scheduler, scheduler_from_diffusers_config

        d = self.model_config.defaults
        # A diffusers checkpoint's own scheduler config is honoured when its solver is the one asked for.
        if d.scheduler_config is not None and p.solver == d.solver:
            sched, _ = scheduler_from_diffusers_config(d.scheduler_config)
        else:
            sched = make_scheduler(p.solver, convention=d.convention)
        sched.set_timesteps(p.num_inference_steps, shift=p.shift, device=self.device)
        return sched

    def prepare_latents(self, p: SamplingParams) -> tuple[torch.Tensor, int | None]:
        """Initial noise [1, 16, T', H/8, W/8] float32: given `latents`, or seeded (CPU generator, so the
        same seed gives the same video on any device)."""
        shape = p.latent_shape(self.model_config.dit.out_dim)
        if p.latents is not None:
            if tuple(p.latents.shape) != shape:
                raise InputError(f"latents must have shape {list(shape)} for {p.width}x{p.height}, {p.num_frames} frames; got {list(p.latents.shape)}")
            return p.latents.to(self.device, torch.float32), p.seed
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device), seed

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.engine.dtype
        return self.dit(x.to(dtype), t.float(), context.to(dtype))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float32 latents -> video [1, 3, F, H, W] in [-1, 1]."""
        return self.vae.decode(latents.to(self.vae_dtype))

    # -- the whole run -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, params: SamplingParams) -> GenerationResult:
        p = params.with_defaults(self.model_config.defaults)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cond = self.encode_prompt([p.prompt])
        uncond = self.encode_prompt([p.negative_prompt]) if p.guidance_scale != 1.0 else None
        timings["text_encoder"] = self._lap(t0)

        t1 = time.perf_counter()
        latents, seed = self.prepare_latents(p)
        sched = self.make_scheduler(p)
        latents = denoise(self.model_fn, sched, latents, cond, uncond, p.guidance_scale,
                          callback=p.callback, progress=self.progress)
        timings["denoise"] = self._lap(t1)
        result = GenerationResult(latents=latents, seed=seed, timings=timings)
        if p.output_type == "latent":
            timings["total"] = self._lap(t0)
            return result

        t2 = time.perf_counter()
        video = self.decode(latents)
        timings["vae_decode"] = self._lap(t2)
        frames = video_to_frames(video)
        result.frames = torch.from_numpy(frames) if p.output_type == "pt" else frames
        if p.output_type == "mp4":
            from lightx2v.io.video import write_mp4

            t3 = time.perf_counter()
            path = p.output_path or default_output_path(seed)
            result.path = str(write_mp4(frames, path, fps=p.fps))
            timings["save"] = self._lap(t3)
        timings["total"] = self._lap(t0)
        return result

    def _lap(self, since: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since


def default_output_path(seed: int | None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("outputs") / f"wan_t2v_{stamp}_seed{seed}.mp4")
