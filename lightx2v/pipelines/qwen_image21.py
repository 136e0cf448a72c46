"""Qwen-Image-2.1 text-to-image: diffusers' QwenImage21Pipeline (and the Turbo checkpoint), through our loop.

    encode the prompt (and the negative prompt, separately)    Qwen3-VL (models/qwen_image/text21.py)
    noise [N, z, 1, H/16, W/16] -> [N, hw, z]                   2.1 reads latents unpatched: a plain flatten
    denoise                                                    pipelines/base.py denoise: dynamic-shift Euler on
                                                               linspace(1, 1/n, n) or the checkpoint's
                                                               `sample_sigmas` (Turbo); plain CFG (no rescale)
    decode, write                                              the 2.1 VAE (vae21.py); its RGBA output's RGB

Design: `QwenImagePipeline` (t2i Qwen-Image) supplies the engine plumbing, request checks, output
and metadata; this class replaces what 2.1 does differently: the text, the latents' layout, the
schedule's grid, the guidance and the DiT call. The DiT's prefix K/V (text tokens: they depend
neither on the step nor on the latents) are kept for the generation by the engine's `context_kv`
step, one set per CFG branch (the reference's `use_kv_cache`, on by default there too), and dropped
before the decode.

Guidance: diffusers' 2.1 pipeline runs true CFG only with guidance_scale > 1 and a negative prompt,
v = v_u + g (v_c - v_u), without Qwen-Image's norm rescale; its default scale is 1 (no CFG).

Alpha: the 2.1 VAE decodes 4 channels (RGBA) and diffusers returns RGBA images; the image outputs of
lightx2v are RGB, so the first three channels are written and the alpha channel is dropped.

Not wired yet: the image-conditioned mode (condition images read by Qwen3-VL's vision tower and
placed in its image slots): the DiT supports it (dit21.Prompt21), the pipeline refuses `image`.
"""

from __future__ import annotations

import random
import time
from typing import Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.models.qwen_image.dit21 import Prompt21
from lightx2v.pipelines.base import Counter, Guidance, StepContext, denoise
from lightx2v.pipelines.output import ImageResult, decode_and_write_images
from lightx2v.pipelines.qwen_image import QwenImagePipeline
from lightx2v.runtime.offload import placed


class QwenImage21Pipeline(QwenImagePipeline):
    """The loaded components of one Qwen-Image-2.1 checkpoint (t2i): dit, text_encoder, vae."""

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "QwenImage21Pipeline":
        from lightx2v.loading.components import load_component
        from lightx2v.models.qwen_image.spec21 import load_dit21
        from lightx2v.models.qwen_image.text import load_tokenizer
        from lightx2v.runtime.engine import apply_engine, quant_on_load

        if engine.cache.enabled:  # refused before any weight is read
            raise InputError(f"cache {engine.cache.method}: the feature caches are not supported for Qwen-Image-2.1 "
                             "yet; drop --cache", field="cache")
        staging, dt = engine.staging_device(), engine.dtype
        parts = {"dit": load_dit21(mc, device=staging, dtype=dt, quant=quant_on_load(engine, "dit", {}))}
        for c in mc.spec.components:
            parts[c.name] = load_component(mc, c.name, staging, dt)
        vae_dtype = torch.float32
        if engine.vae_dtype is not None:
            parts["vae"], vae_dtype = parts["vae"].to(engine.vae_dtype), engine.vae_dtype
        pipe = cls(mc, engine, tokenizer=load_tokenizer(mc.files["tokenizer"]), vae_dtype=vae_dtype,
                   progress=progress, **parts)
        apply_engine(pipe, engine)
        return pipe

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        if p.image is not None or p.last_image is not None:
            raise InputError("Qwen-Image-2.1's image-conditioned mode is not supported yet: text-to-image only",
                             field="image")
        super().check_request(mc, p)
        # a Turbo checkpoint's grid fixes the step count (the inherited check tried linspace)
        mc.arch.schedule.sigmas(p.num_inference_steps, 1, None, mc.arch.sample_sigmas)

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompt: str, num_images: int = 1) -> torch.Tensor:
        """The prompt's states [N, L, D] in the compute dtype, repeated for N images."""
        from lightx2v.models.qwen_image.text21 import encode_prompt21

        with placed(self, "text_encoder"):
            embeds = encode_prompt21(self.text_encoder, self.tokenizer, prompt)
        return embeds.to(self.device, self.engine.dtype).expand(num_images, -1, -1)

    def make_scheduler(self, p: SamplingParams, image_seq_len: int):
        from lightx2v.models.qwen_image.schedule import DynamicShiftEuler

        arch = self.model_config.arch
        sched = DynamicShiftEuler(arch.schedule, image_seq_len, grid=arch.sample_sigmas)
        sched.set_timesteps(p.num_inference_steps, shift=None if self._dynamic_shift else p.shift, device=self.device)
        return sched

    def prepare_latents(self, p: SamplingParams, size: tuple[int, int]) -> tuple[torch.Tensor, Optional[int]]:
        """Initial noise [N, hw, z] float32: given ([N, hw, z] as diffusers' `latents`, or [N, z, 1, h, w])
        or CPU-seeded: one draw of [N, z, 1, h, w] (diffusers' (N, 1, z, h, w): the same numbers)."""
        n = p.num_images or 1
        shape = (n,) + tuple(self.geometry.latent_shape(1, *size))[1:]  # [N, z, 1, H/16, W/16]
        flat = (n, shape[3] * shape[4], shape[1])
        if p.latents is not None:
            x = p.latents
            if tuple(x.shape) == shape:
                x = x.flatten(2).transpose(1, 2)
            elif tuple(x.shape) != flat:
                raise InputError(f"latents must have shape {list(flat)} (as diffusers) or {list(shape)} for "
                                 f"{size[1]}x{size[0]}; got {list(x.shape)}", field="latents")
            return x.to(self.device, torch.float32), p.seed
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).flatten(2).transpose(1, 2).to(self.device), seed

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: Prompt21, ctx: StepContext) -> torch.Tensor:
        dit = self.dit
        dit.step_context = ctx
        try:
            return dit(x.to(self.engine.dtype), t.float().expand(x.shape[0]), c, self._grid)
        finally:
            dit.step_context = None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_chunk=None) -> torch.Tensor:
        """Latents [N, z, 1, h, w] float32 -> RGB [N, 3, 1, H, W] in [-1, 1] (the VAE's alpha dropped)."""
        with placed(self, "vae"):
            return self.vae.decode(latents.to(self.vae_dtype))[:, :3]

    # -- the whole run -------------------------------------------------------------------------
    def _run(self, p: SamplingParams) -> ImageResult:
        from lightx2v.runtime.cache import cache_stats
        from lightx2v.runtime.context_kv import reset_context_kv

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        n = p.num_images or 1
        cfg = p.guidance_scale > 1.0 and p.negative_prompt is not None  # diffusers' do_true_cfg
        with self._stage("text encoder", p):
            cond = Prompt21(self.encode_text(p.prompt, n))
            uncond = Prompt21(self.encode_text(p.negative_prompt, n)) if cfg else None
        timings["text_encoder"] = self._lap(t0)
        t1 = time.perf_counter()
        size = (p.height, p.width)
        _, _, _, h, w = self.geometry.latent_shape(1, *size)
        self._grid = (h, w)
        counter = Counter(self.model_fn)
        with self._stage("denoise", p):
            latents, seed = self.prepare_latents(p, size)
            sched = self.make_scheduler(p, latents.shape[1])
            latents = denoise(counter, sched, latents, cond, uncond, Guidance(scale=p.guidance_scale if cfg else 1.0),
                              callback=p.callback, progress=self.progress)
        reset_context_kv([self.dit])  # the prefix K/V are not needed by the decode
        timings["denoise"] = self._lap(t1)
        result = ImageResult(latents=latents, seed=seed, timings=timings,
                             stats=cache_stats([self.dit], counter.stats(), timings))
        if p.output_type != "latent":
            image_latents = latents.transpose(1, 2).reshape(latents.shape[0], -1, 1, h, w)  # [N, z, 1, h, w]
            decode_and_write_images(self, p, image_latents, seed, size, result)
        timings["total"] = self._lap(t0)
        return result
