"""Qwen-Image text-to-image: diffusers' QwenImagePipeline, through our loop.

    encode the prompt (and the negative prompt, separately)   Qwen2.5-VL (models/qwen_image/text.py)
    pack the noise 2x2                                         [1, z, 1, H/8, W/8] -> [1, HW/256, 4z]
    denoise                                                    pipelines/base.py denoise: dynamic-shift Euler
                                                               (models/qwen_image/schedule.py), CFG with the
                                                               norm-preserving rescale (`NormRescaledCFG`)
    unpack, decode, write                                      the VAE (Wan2.1's network), PNG / WebP / JPEG
                                                               (pipelines/output.py)

Design: the engine plumbing (LoRA sets, the lock, stages, timing, placement hooks) is `WanPipeline`'s,
which this class extends; what differs is written here: the request rules, the text, the packed
latents, the schedule, the guidance and the image output. The CFG branches run one after the other
(the prompt and the negative prompt have different token counts, and the DiT takes no text mask).

Latents: the loop works on diffusers' packed layout [1, L, 4z] (what `scheduler.step` and the callback
see); a request's `latents` may be given packed (diffusers' `latents` argument) or as the image latents
[1, z, 1, H/8, W/8] (`Geometry.latent_shape`). A request's `shift` left None is the dynamic shift of the
checkpoint's scheduler config; a number is a fixed shift (Lightning LoRAs use 3).

Several images (`num_images` N): one batch of N, as diffusers' num_images_per_prompt: the noise
[N, z, 1, h, w] is one draw from one seeded CPU generator (so image 0 of N differs from the image of
N = 1 with the same seed, and all N equal diffusers' with that generator), the prompt states are
repeated N times. Output: "pil" (the API's default here), "np" / "pt" float32 [N, H, W, 3], "latent"
(the packed latents [N, L, 4z], no decode), or files by the output path's extension (.png, .webp,
.jpg; N files NAME_0.png ...).
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import torch

from lightx2v.config import IMAGE_FILE_TYPES, EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.pipelines.base import Counter, Guidance, StepContext, denoise
from lightx2v.pipelines.output import ImageResult, decode_and_write_images
from lightx2v.pipelines.wan import WanPipeline
from lightx2v.runtime.offload import placed


@dataclass(frozen=True)
class QwenInputs:
    """What the DiT is conditioned on besides x and t (one CFG branch): the prompt's states [1, Lt, D]."""

    context: torch.Tensor


@dataclass(frozen=True)
class NormRescaledCFG(Guidance):
    """QwenImagePipeline's true CFG: v = v_u + g (v_c - v_u), then rescaled per token to the norm of v_c
    (norm over the packed channels, the last dim). The branches run as `Guidance` runs them."""

    def combine(self, v: torch.Tensor, v_u: torch.Tensor, g: float) -> torch.Tensor:
        # on the combined result, from the cond branch's v: under CFG parallel both ranks hold both
        # branches after the exchange, so each computes this exactly as one process does
        out = super().combine(v, v_u, g)
        return out * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(out, dim=-1, keepdim=True))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, z, 1, h, w] -> [B, (h/2)(w/2), 4z]: each token 2x2 latent pixels, channel-major (diffusers' _pack_latents)."""
    b, c, _, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, (h/2)(w/2), 4z] -> [B, z, 1, h, w] (h, w: latent sides; diffusers' _unpack_latents)."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, 1, h, w)


class QwenImagePipeline(WanPipeline):
    """The loaded components of one Qwen-Image checkpoint (t2i): dit, text_encoder, vae."""

    # (parallel) cfg_parallel, ulysses and ring (the DiT's joint plan), vae_parallel (the Wan VAE's raw decoder)
    parallel_ready = True
    parallel_ring = True
    parallel_vae = True

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, tokenizer, vae,
                 vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        super().__init__(model_config, engine, dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                         vae_dtype=vae_dtype, progress=progress)
        self.components = {"dit": dit, "text_encoder": text_encoder, "vae": vae}
        self._dynamic_shift = True

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "QwenImagePipeline":
        from lightx2v.loading.components import load_component
        from lightx2v.models.qwen_image.text import load_tokenizer
        from lightx2v.runtime.engine import apply_engine, quant_on_load

        cls.check_engine(engine)
        staging, dt = engine.staging_device(), engine.dtype
        parts = {"dit": cls.load_dit(mc, staging, dt, quant=quant_on_load(engine, "dit", {}))}
        for c in mc.spec.components:
            parts[c.name] = load_component(mc, c.name, staging, dt)
        vae_dtype = torch.float32
        if engine.vae_dtype is not None:
            parts["vae"], vae_dtype = parts["vae"].to(engine.vae_dtype), engine.vae_dtype
        pipe = cls(mc, engine, tokenizer=load_tokenizer(mc.files["tokenizer"]), vae_dtype=vae_dtype,
                   progress=progress, **parts)
        pipe.after_load(mc)
        apply_engine(pipe, engine)
        return pipe

    # -- what a sibling model of the family (Qwen-Image-2.1) changes in `load` --------------------------
    @classmethod
    def check_engine(cls, engine: EngineConfig) -> None:
        """Refuse, before any weight is read, what the engine asks and this model cannot do."""

    @classmethod
    def load_dit(cls, mc: ModelConfig, device, dtype: torch.dtype, quant: Optional[str]):
        from lightx2v.loading.components import load_dit

        return load_dit(mc, device, dtype, quant=quant)

    def after_load(self, mc: ModelConfig) -> None:
        """Anything read from the folder beside the components (nothing for Qwen-Image)."""

    # -- the request ----------------------------------------------------------------------------
    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        from lightx2v.runtime.memory import check_limits

        if p.image is not None or p.last_image is not None:
            raise InputError("this is a Qwen-Image text-to-image checkpoint: it takes no image", field="image")
        if p.solver != "euler":
            raise InputError(f"Qwen-Image samples with the euler solver (its scheduler config), got {p.solver!r}",
                             field="solver")
        if image_output_type(p) not in IMAGE_OUTPUT_TYPES:
            raise InputError(f"output {p.output_path or p.output_type!r} is a video; Qwen-Image makes images: a .png, "
                             ".webp or .jpg file, or output_type pil, np, pt or latent", field="output_type")
        if p.guidance_scale_2 is not None and p.guidance_scale_2 != p.guidance_scale:
            raise InputError("guidance_scale_2 is a second expert's scale; Qwen-Image has one DiT", field="guidance_scale_2")
        mc.spec.geometry(mc).check(p.height, p.width, p.num_frames)
        check_limits(mc, height=p.height, width=p.width, num_frames=1, steps=p.num_inference_steps, force=p.force)
        mc.arch.schedule.sigmas(p.num_inference_steps, 1)  # a step count the schedule cannot make fails now

    @torch.no_grad()
    def __call__(self, params: SamplingParams) -> ImageResult:
        # the request's shift: None keeps the scheduler config's dynamic shift (with_defaults fills a number)
        self._dynamic_shift = params.shift is None
        if params.output_type == "mp4":  # the API's default type is a video's: PIL images, or the path's format
            params = replace(params, output_type=image_output_type(params))
        return super().__call__(params)

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompt: str, num_images: int = 1) -> torch.Tensor:
        """The prompt's states [N, Lt, D] in the compute dtype (one prompt: no padding), repeated for
        N images as diffusers repeats them."""
        from lightx2v.models.qwen_image.text import encode_prompts

        with placed(self, "text_encoder"):
            embeds, _ = encode_prompts(self.text_encoder, self.tokenizer, [prompt])
        return embeds.to(self.device, self.engine.dtype).expand(num_images, -1, -1)

    def make_scheduler(self, p: SamplingParams, image_seq_len: int):
        from lightx2v.models.qwen_image.schedule import DynamicShiftEuler

        sched = DynamicShiftEuler(self.model_config.arch.schedule, image_seq_len)
        sched.set_timesteps(p.num_inference_steps, shift=None if self._dynamic_shift else p.shift, device=self.device)
        return sched

    def prepare_latents(self, p: SamplingParams, size: tuple[int, int]) -> tuple[torch.Tensor, Optional[int]]:
        """Initial noise, packed [N, L, 4z] float32 (N = num_images): given (packed or [N, z, 1, h, w]) or
        CPU-seeded: one draw of [N, z, 1, h, w] (diffusers' (N, 1, z, h, w): the same numbers, T = 1)."""
        n = p.num_images or 1
        shape = (n,) + tuple(self.geometry.latent_shape(1, *size))[1:]  # [N, z, 1, H/8, W/8]
        if p.latents is not None:
            x = p.latents
            packed = (n, (shape[3] // 2) * (shape[4] // 2), shape[1] * 4)
            if tuple(x.shape) == shape:
                x = pack(x)
            elif tuple(x.shape) != packed:
                raise InputError(f"latents must have shape {list(packed)} (packed, as diffusers) or {list(shape)} for "
                                 f"{size[1]}x{size[0]}; got {list(x.shape)}", field="latents")
            return x.to(self.device, torch.float32), p.seed
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        if self.parallel is not None:  # (parallel) every rank draws rank 0's noise
            seed = self.parallel.agree_seed(seed)
        g = torch.Generator("cpu").manual_seed(seed)
        return pack(torch.randn(shape, generator=g, dtype=torch.float32)).to(self.device), seed

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: QwenInputs, ctx: StepContext) -> torch.Tensor:
        dit = self.dit
        dit.step_context = ctx  # what a cache on the block stack decides from (lightx2v.runtime.cache)
        try:
            return dit(x.to(self.engine.dtype), t.float().expand(x.shape[0]), c.context, self._segments)
        finally:
            dit.step_context = None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_chunk=None) -> torch.Tensor:
        """Image latents [N, z, 1, h, w] float32 -> [N, 3, 1, H, W] in [-1, 1]."""
        with placed(self, "vae"):
            if self.parallel is not None and self.parallel.vae_parallel:  # (parallel) every rank decodes a part
                from lightx2v.runtime.parallel import decode

                return decode(self, self.vae, latents.to(self.vae_dtype))
            return self.vae.decode(latents.to(self.vae_dtype))

    def encode_conditions(self, p: SamplingParams, cfg: bool, timings: dict) -> tuple[QwenInputs, Optional[QwenInputs], list]:
        """(cond, uncond or None, the token grids of what the DiT sees after the noisy image): text-to-image
        encodes the prompts and adds nothing (the edit pipeline adds its condition images here)."""
        t0 = time.perf_counter()
        n = p.num_images or 1
        with self._stage("text encoder", p):
            cond = QwenInputs(self.encode_text(p.prompt, n))
            uncond = QwenInputs(self.encode_text(p.negative_prompt, n)) if cfg else None
        timings["text_encoder"] = self._lap(t0)
        return cond, uncond, []

    # -- the whole run -------------------------------------------------------------------------
    def _run(self, p: SamplingParams) -> ImageResult:
        from lightx2v.runtime.cache import cache_stats

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = p.guidance_scale > 1.0 and p.negative_prompt is not None  # diffusers' do_true_cfg
        if cfg and self.model_config.distill is not None:  # a Lightning preset (models/qwen_image/lightning.py)
            from lightx2v.models.qwen_image.lightning import cfg_warning

            warnings.warn(cfg_warning(self.model_config.distill, p.guidance_scale), stacklevel=4)
        cond, uncond, more_segments = self.encode_conditions(p, cfg, timings)
        t1 = time.perf_counter()
        size = (p.height, p.width)
        _, _, _, h, w = self.geometry.latent_shape(1, *size)
        self._segments = [(1, h // 2, w // 2), *more_segments]
        counter = Counter(self.model_fn)
        with self._stage("denoise", p):
            latents, seed = self.prepare_latents(p, size)
            sched = self.make_scheduler(p, latents.shape[1])
            guidance = NormRescaledCFG(scale=p.guidance_scale if cfg else 1.0, **parallel_guidance(self))
            latents = denoise(counter, sched, latents, cond, uncond, guidance, callback=p.callback,
                              progress=self.progress)
        timings["denoise"] = self._lap(t1)
        result = ImageResult(latents=latents, seed=seed, timings=timings,
                             stats=cache_stats([self.dit], counter.stats(), timings))
        if p.output_type != "latent" and (self.parallel is None or self.parallel.writes_output):  # rank 0 writes
            decode_and_write_images(self, p, unpack(latents, h, w), seed, size, result)
        elif p.output_type != "latent" and self.parallel.vae_parallel:  # (parallel) this rank's part of the decode
            self.decode(unpack(latents, h, w))
        timings["total"] = self._lap(t0)
        return result

    def output_metadata(self, p: SamplingParams, seed: Optional[int], size: tuple[int, int]) -> dict:
        from lightx2v import __version__

        mc = self.model_config
        return {
            "lightx2v": __version__, "model": str(mc.root), "family": mc.family, "task": mc.task,
            "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": seed,
            "latents_given": p.latents is not None, "num_inference_steps": p.num_inference_steps,
            "guidance_scale": p.guidance_scale, "shift": "dynamic" if self._dynamic_shift else p.shift,
            "solver": p.solver, "width": size[1], "height": size[0], "num_images": p.num_images or 1,
            "loras": self.lora_metadata(),
            # what the sampling and the weights came from besides the folder: a Lightning preset, a --dit-path file
            "preset": getattr(mc.distill, "name", None), "dit_path": None if mc.dit_source is None else str(mc.dit_source.path),
        }


def parallel_guidance(pipe) -> dict:
    """CFG across the ranks of the CFG group under cfg_parallel; else the branches one after the other
    (the prompt and the negative prompt have different token counts: no batch of 2)."""
    from lightx2v.runtime.parallel import guidance_kw

    kw = guidance_kw(pipe)
    return kw if kw["mode"] == "parallel" else {}


IMAGE_OUTPUT_TYPES = IMAGE_FILE_TYPES + ("pil", "np", "pt", "latent")


def image_output_type(p: SamplingParams) -> str:
    """The output type an image pipeline runs: the default "mp4" is PIL images without a path, the
    path's format with one (a video extension stays a video type: check_request refuses it)."""
    if p.output_type != "mp4":
        return p.output_type
    if p.output_path is None:
        return "pil"
    from lightx2v.io.output import image_type_for

    return image_type_for(p.output_path)
