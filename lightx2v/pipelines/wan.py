"""Wan2.1 text-to-video, image-to-video and first-last-frame-to-video: one pipeline, three tasks.

    encode the prompt (and negative prompt)            T5
    (i2v/flf2v) condition on the image(s)              CLIP tokens + VAE latents + mask (wan_image.py)
    denoise                                            the loop of pipelines/base.py
    decode, write                                      VAE, io/video.py

The components are built and loaded by lightx2v.loading.components; this file only wires them
into the loop and turns a `SamplingParams` into a `GenerationResult`.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.pipelines.base import GenerationResult, denoise, video_to_frames


@dataclass(frozen=True)
class DiTInputs:
    """What the DiT is conditioned on besides x and t (one CFG branch)."""

    context: torch.Tensor                     # [1, text_len, text_dim]
    clip_fea: Optional[torch.Tensor] = None   # [1, 257 * n, 1280]
    y: Optional[torch.Tensor] = None          # [1, 20, T', h, w]


class WanPipeline:
    """Holds the loaded components of one Wan2.1 checkpoint (t2v, i2v or flf2v)."""

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, tokenizer, vae,
                 clip=None, vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        self.model_config = model_config
        self.engine = engine
        self.device = engine.torch_device()
        self.dit, self.text_encoder, self.tokenizer, self.vae, self.clip = dit, text_encoder, tokenizer, vae, clip
        self.vae_dtype = vae_dtype
        self.progress = progress
        self.merged_loras: tuple = ()   # (path, strength) merged into the DiT at load
        self.lora_set = None            # runtime.lora.LoraSet once dynamic LoRAs are used

    # -- LoRA -----------------------------------------------------------------------------------
    def merge_loras(self, loras, allow_unmatched: bool = False) -> None:
        """Merge (path, strength) LoRAs into the DiT weights: no run-time cost, fixed until reload."""
        from lightx2v.loading.lora import load_lora, merge_loras_

        if self.lora_set is not None and self.lora_set.active:
            raise InputError("dynamic LoRAs are active; set_lora([]) before merging LoRAs")
        weights = [(load_lora(path, self.dit), float(s)) for path, s in loras]
        merge_loras_(self.dit, weights, allow_unmatched=allow_unmatched)
        self.merged_loras += tuple((str(path), float(s)) for path, s in loras)

    def set_lora(self, loras, allow_unmatched: bool = False) -> None:
        """Switch the dynamic LoRAs to (path, strength) pairs ([] removes them): the base weights
        stay untouched, so this needs no reload."""
        from lightx2v.loading.lora import load_lora
        from lightx2v.runtime.lora import apply_dynamic_lora

        weights = [(load_lora(path, self.dit), float(s)) for path, s in loras]
        if self.lora_set is None:
            self.lora_set = apply_dynamic_lora(self.dit, weights, allow_unmatched=allow_unmatched)
        else:
            self.lora_set.set(weights, allow_unmatched=allow_unmatched)

    @property
    def task(self) -> str:
        return self.model_config.task

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "WanPipeline":
        from lightx2v.loading import components as C

        device = engine.torch_device()
        return cls(
            mc, engine,
            dit=C.load_dit(mc, device, engine.dtype, engine.attention, engine.quant),
            text_encoder=C.load_text_encoder(mc, device, engine.dtype),
            tokenizer=C.load_tokenizer(mc),
            vae=C.load_vae(mc, device, torch.float32),
            clip=C.load_clip(mc, device, engine.dtype, engine.attention) if mc.task != "t2v" else None,
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

    @torch.no_grad()
    def encode_images(self, images: list) -> torch.Tensor:
        """CLIP tokens of the original images, each layout by its own preprocessing -> [1, 257 * n, 1280]."""
        from lightx2v.models.wan.clip import preprocess_diffusers, preprocess_official
        from lightx2v.pipelines.wan_image import to_signed_tensor

        mc = self.model_config
        if mc.layout == "official":
            pixels = torch.cat([preprocess_official(to_signed_tensor(im)[None], mc.clip) for im in images])
        else:
            pixels = preprocess_diffusers(images, mc.image_processor)
        dtype = next(self.clip.parameters()).dtype
        tokens = self.clip(pixels.to(self.device, dtype))    # [n, 257, 1280]
        return tokens.reshape(1, -1, tokens.shape[-1])

    def condition_on_images(self, p: SamplingParams):
        from lightx2v.pipelines.wan_image import build_condition

        return build_condition(
            image=p.image, last_image=p.last_image, height=p.height, width=p.width, num_frames=p.num_frames,
            mode=p.resize_mode, convention=self.model_config.layout, vae=self.vae, encode_clip=self.encode_images,
            device=self.device, vae_dtype=self.vae_dtype,
        )

    def make_scheduler(self, p: SamplingParams):
        from lightx2v.schedulers import make_scheduler, scheduler_from_diffusers_config

        d = self.model_config.defaults
        # A diffusers checkpoint's own scheduler config is honoured when its solver is the one asked for.
        if d.scheduler_config is not None and p.solver == d.solver:
            sched, _ = scheduler_from_diffusers_config(d.scheduler_config)
        else:
            options = d.solver_options if p.solver == d.solver else None
            sched = make_scheduler(p.solver, convention=d.convention, config=options)
        sched.set_timesteps(p.num_inference_steps, shift=p.shift, device=self.device)
        return sched

    def prepare_latents(self, p: SamplingParams, size: tuple[int, int]) -> tuple[torch.Tensor, int | None]:
        """Initial noise [1, 16, T', h/8, w/8] float32: given `latents`, or seeded (CPU generator, so the
        same seed gives the same video on any device)."""
        shape = p.latent_shape(self.model_config.dit.out_dim, size=size)
        if p.latents is not None:
            if tuple(p.latents.shape) != shape:
                raise InputError(f"latents must have shape {list(shape)} for {size[1]}x{size[0]}, {p.num_frames} frames; got {list(p.latents.shape)}")
            return p.latents.to(self.device, torch.float32), p.seed
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device), seed

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: DiTInputs) -> torch.Tensor:
        dtype = self.engine.dtype
        cast = (lambda v: None if v is None else v.to(dtype))
        return self.dit(x.to(dtype), t.float(), c.context.to(dtype), clip_fea=cast(c.clip_fea), y=cast(c.y))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float32 latents -> video [1, 3, F, H, W] in [-1, 1]."""
        return self.vae.decode(latents.to(self.vae_dtype))

    def check_task(self, p: SamplingParams) -> None:
        wanted = "t2v" if p.image is None else ("flf2v" if p.last_image is not None else "i2v")
        if wanted == self.task:
            return
        if self.task == "t2v":
            raise InputError("this is a text-to-video checkpoint: it takes no image (use an I2V checkpoint for image-to-video)")
        if self.task == "i2v":
            raise InputError("this is an image-to-video checkpoint: give an image" if p.image is None else
                             "this I2V checkpoint takes one image; first-last-frame needs a Wan2.1 FLF2V checkpoint")
        raise InputError("this is a first-last-frame checkpoint: give both image and last_image")

    # -- the whole run -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, params: SamplingParams) -> GenerationResult:
        p = params.with_defaults(self.model_config.defaults)
        self.check_task(p)
        if self.model_config.distill is not None:
            from lightx2v.models.wan.distill import cfg_warning

            if (msg := cfg_warning(p.guidance_scale)) is not None:
                warnings.warn(msg, stacklevel=3)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = p.guidance_scale != 1.0
        states = self.encode_prompt([p.prompt, p.negative_prompt] if cfg else [p.prompt])  # one T5 pass
        context, neg = states[:1], (states[1:] if cfg else None)
        timings["text_encoder"] = self._lap(t0)
        size, clip_fea, y = (p.height, p.width), None, None
        if self.task != "t2v":
            t1 = time.perf_counter()
            c = self.condition_on_images(p)
            size, clip_fea, y = (c.height, c.width), c.clip_fea, c.y
            timings["image_encoder"] = self._lap(t1)
        cond = DiTInputs(context, clip_fea, y)
        uncond = None if neg is None else DiTInputs(neg, clip_fea, y)

        t1 = time.perf_counter()
        latents, seed = self.prepare_latents(p, size)
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
            path = p.output_path or default_output_path(self.task, seed)
            result.path = str(write_mp4(frames, path, fps=p.fps))
            timings["save"] = self._lap(t3)
        timings["total"] = self._lap(t0)
        return result

    def _lap(self, since: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since


def default_output_path(task: str, seed: int | None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("outputs") / f"wan_{task}_{stamp}_seed{seed}.mp4")
