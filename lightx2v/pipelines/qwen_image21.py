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

Image-conditioned generation (`image=`: one image or several, as diffusers' `image`): each image is
read by Qwen3-VL's vision tower inside the prompt (models/qwen_image/vision21.py) and VAE-encoded; its
latents take the encoder's image slots in the DiT's sequence (the prefix). The output size left unset
follows the last image's aspect ratio at 1024 x 1024 pixels, as the reference's `output_resolution`.
Images arrive as RGB (the request layer opens them so): their alpha is opaque.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.models.qwen_image.dit21 import Prompt21
from lightx2v.pipelines.base import Counter, Guidance, StepContext, denoise
from lightx2v.pipelines.output import ImageResult, decode_and_write_images
from lightx2v.pipelines.qwen_image import QwenImagePipeline
from lightx2v.pipelines.qwen_image_edit import calculate_dimensions, request_images
from lightx2v.runtime.offload import placed

OUTPUT_RESOLUTION = 1024  # the reference's output_resolution: the default side, and the condition images' area


class QwenImage21Pipeline(QwenImagePipeline):
    """The loaded components of one Qwen-Image-2.1 checkpoint (t2i): dit, text_encoder, vae."""

    # (parallel) not yet: its DiT (prefix K/V, one stream) declares no sequence-parallel plan; refused by name
    parallel_ready = False
    parallel_title = "Qwen-Image-2.1"

    # the condition images' area (side^2) and the default output side: the reference's output_resolution
    output_resolution = OUTPUT_RESOLUTION

    @classmethod
    def check_engine(cls, engine: EngineConfig) -> None:
        if engine.cache.enabled:  # refused before any weight is read
            raise InputError(f"cache {engine.cache.method}: the feature caches are not supported for Qwen-Image-2.1 "
                             "yet; drop --cache", field="cache")

    @classmethod
    def load_dit(cls, mc: ModelConfig, device, dtype: torch.dtype, quant: Optional[str]):
        from lightx2v.models.qwen_image.spec21 import load_dit21

        return load_dit21(mc, device=device, dtype=dtype, quant=quant)

    def after_load(self, mc: ModelConfig) -> None:
        self.image_processor = None  # the image-conditioned mode's (processor/preprocessor_config.json)
        if (Path(mc.files["tokenizer"]) / "preprocessor_config.json").is_file():
            from lightx2v.models.qwen_image.vision import load_image_processor

            self.image_processor = load_image_processor(mc.files["tokenizer"])

    @classmethod
    def fill_from_images(cls, mc: ModelConfig, p: SamplingParams) -> SamplingParams:
        """A height or width left None: the last condition image's ratio at 1024 x 1024 (the reference's)."""
        images = request_images(p)
        if not images or (p.height is not None and p.width is not None):
            return p
        w, h = calculate_dimensions(cls.output_resolution ** 2, images[-1].width / images[-1].height)
        return replace(p, height=h if p.height is None else p.height, width=w if p.width is None else p.width)

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        if p.last_image is not None:
            raise InputError("Qwen-Image-2.1 takes condition images (image=...), not a last frame", field="last_image")
        super().check_request(mc, replace(p, image=None))
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

    @torch.no_grad()
    def encode_conditions21(self, p: SamplingParams, cfg: bool, timings: dict) -> tuple[Prompt21, Optional[Prompt21]]:
        """The two branches' Prompt21 (uncond None without CFG): text only, or with the condition images."""
        n = p.num_images or 1
        images = request_images(p)
        t0 = time.perf_counter()
        if not images:
            with self._stage("text encoder", p):
                cond = Prompt21(self.encode_text(p.prompt, n))
                uncond = Prompt21(self.encode_text(p.negative_prompt, n)) if cfg else None
            timings["text_encoder"] = self._lap(t0)
            return cond, uncond
        from lightx2v.models.qwen_image.vision21 import encode_prompt21_images, prepare_images21

        if self.image_processor is None:
            raise InputError("this Qwen-Image-2.1 folder has no processor/preprocessor_config.json: it cannot read "
                             "condition images", field="image")
        seen, vae_in = prepare_images21(images, self.output_resolution)
        branches = [p.prompt] + ([p.negative_prompt] if cfg else [])
        with self._stage("text encoder", p), placed(self, "text_encoder"):
            encoded = [encode_prompt21_images(self.text_encoder, self.tokenizer, self.image_processor, text, seen)
                       for text in branches]
        timings["text_encoder"] = self._lap(t0)
        t1 = time.perf_counter()
        with self._stage("VAE encode", p), placed(self, "vae"):
            dev = next(self.vae.parameters()).device
            latents = [self.vae.encode(x.to(dev, self.vae_dtype)).float().to(self.device) for x in vae_in]
        timings["vae_encode"] = self._lap(t1)
        shapes = tuple((1, z.shape[3], z.shape[4]) for z in latents)
        tokens = torch.cat([z.flatten(2).transpose(1, 2) for z in latents], dim=1).expand(n, -1, -1)  # [N, sum hw, z]
        out = [Prompt21(states.to(self.device, self.engine.dtype).expand(n, -1, -1), slots.cpu(),
                        tokens.to(self.engine.dtype), shapes) for states, slots in encoded]
        return out[0], (out[1] if cfg else None)

    # -- the whole run -------------------------------------------------------------------------
    def _run(self, p: SamplingParams) -> ImageResult:
        from lightx2v.runtime.cache import cache_stats
        from lightx2v.runtime.context_kv import reset_context_kv

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = p.guidance_scale > 1.0 and p.negative_prompt is not None  # diffusers' do_true_cfg
        cond, uncond = self.encode_conditions21(p, cfg, timings)
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
