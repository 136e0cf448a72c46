"""Wan2.1 text-to-video, image-to-video and first-last-frame-to-video: one pipeline, three tasks.

    encode the prompt (and negative prompt)            T5
    (i2v/flf2v) condition on the image(s)              CLIP tokens + VAE latents + mask (wan_image.py)
    denoise                                            the loop of pipelines/base.py
    decode, write                                      VAE, io/ (pipelines/output.py)

The components are built and loaded by lightx2v.loading.components; this file only wires them
into the loop and turns a `SamplingParams` into a `GenerationResult`.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from lightx2v.runtime.offload import placed

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError, NonFiniteError
from lightx2v.pipelines.base import Guidance, GenerationResult, StepContext, denoise, nonfinite_kind
from lightx2v.pipelines.output import decode_and_write
from lightx2v.runtime.lora import LoraSets


@dataclass(frozen=True)
class DiTInputs:
    """What the DiT is conditioned on besides x and t (one CFG branch)."""

    context: torch.Tensor                     # [1, text_len, text_dim]
    clip_fea: Optional[torch.Tensor] = None   # [1, 257 * n, 1280]
    y: Optional[torch.Tensor] = None          # [1, 20, T', h, w]
    # latent frames given clean (timestep 0 on their tokens: Wan2.2 TI2V image-to-video's first frame)
    clean_frames: int = 0

    def cat_batch(self, other: "DiTInputs") -> "DiTInputs":
        """Both branches as one batch (batched CFG): [self, other] along dim 0."""
        cat = (lambda a, b: None if a is None else torch.cat([a, b]))
        return dataclasses.replace(self, context=cat(self.context, other.context),
                                   clip_fea=cat(self.clip_fea, other.clip_fea), y=cat(self.y, other.y))


@dataclass(frozen=True)
class Conditioning:
    """What one request conditions the denoising on (`WanPipeline.condition`).

    size: the video's (height, width) (an image may decide it); fix: latents -> latents with the
    frames the condition fixes re-imposed, applied to the initial noise and after every step
    (`denoise(after_step=...)`; Wan2.2 TI2V's image latent), None when nothing is fixed."""

    cond: DiTInputs
    uncond: Optional[DiTInputs]
    size: tuple[int, int]
    fix: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


class WanPipeline:
    """Holds the loaded components of one Wan2.1 checkpoint (t2v, i2v or flf2v).

    `components` (name -> module) and `transformer_names` are what the engine acts on
    (lightx2v.runtime.engine); a generation holds `lock`, so a pipeline shared by threads serializes.
    """

    transformer_names = ("dit",)
    # (parallel) this pipeline reads `self.parallel` (guidance across ranks, the shared seed, rank 0 writes)
    parallel_ready = True
    # expert name -> DiT name, for a pipeline whose DiTs are experts (lightx2v.loading.lora_plan)
    expert_components: Mapping[str, str] = MappingProxyType({})

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, tokenizer, vae,
                 clip=None, tiny_vae=None, vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        self.model_config = model_config
        self.engine = engine
        self.device = engine.torch_device()
        # vae: None for t2v with a tiny VAE (which then decodes; i2v still encodes its image with the VAE)
        self.components = {"dit": dit, "text_encoder": text_encoder, "vae": vae, "clip": clip, "tiny_vae": tiny_vae}
        self.tokenizer = tokenizer
        self.vae_dtype = vae_dtype
        self.progress = progress
        self.geometry = model_config.spec.geometry(model_config)
        self.merged_loras: tuple = ()   # lora_plan.LoraEntry (path, strength, DiTs) merged at load
        self.dynamic_loras: tuple = ()  # lora_plan.LoraEntry active as dynamic LoRAs (set_lora)
        self.lora_sets = LoraSets()     # DiT name -> runtime.lora.LoraSet once dynamic LoRAs are used
        self.engine_log: list[str] = []  # what apply_engine did
        self.parallel = None  # this rank's ParallelState under torchrun (the engine's parallel step)
        self.lock = threading.Lock()

    dit = property(lambda self: self.components["dit"])
    text_encoder = property(lambda self: self.components["text_encoder"])
    vae = property(lambda self: self.components["vae"])
    clip = property(lambda self: self.components.get("clip"))

    @property
    def lora_set(self) -> Optional[LoraSets]:
        """Every DiT's dynamic LoRA set (`lora_sets`: DiT name -> LoraSet, both experts of a
        two-expert model), None until dynamic LoRAs are used."""
        return self.lora_sets or None

    @property
    def experts(self) -> dict[str, str]:
        """Expert name -> DiT name of the loaded DiTs ({} for one DiT)."""
        return present_experts_of(type(self), [n for n in self.transformer_names if self.components.get(n) is not None])

    def dit_label(self, name: str) -> str:
        """DiT `name` in messages (a model of one DiT: "this model")."""
        return "this model"

    # -- LoRA -----------------------------------------------------------------------------------
    def merge_loras(self, loras=(), allow_unmatched: bool = False, per_dit=None) -> None:
        """Merge (path, strength) LoRAs into the DiT weights: no run-time cost, fixed until reload.
        `loras` go to every DiT; `per_dit` {DiT or expert name: pairs} to one."""
        from lightx2v.runtime.engine import merge_loras

        with self.lock:
            merge_loras(self, loras, allow_unmatched=allow_unmatched, per_dit=per_dit)

    def set_lora(self, loras=(), allow_unmatched: bool = False, per_dit=None) -> None:
        """Switch the dynamic LoRAs to (path, strength) pairs ([] removes them): `loras` on every
        DiT, `per_dit` {DiT or expert name: pairs} on one; each DiT gets exactly its LoRAs. The
        base weights stay untouched, so this needs no reload."""
        from lightx2v.runtime.engine import set_dynamic_lora

        with self.lock:
            set_dynamic_lora(self, loras, allow_unmatched=allow_unmatched, per_dit=per_dit)

    @property
    def task(self) -> str:
        return self.model_config.task

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "WanPipeline":
        """Components built on meta and loaded onto the staging device, then the engine applied:
        each DiT of `transformer_names` the checkpoint has files for, then the family's components."""
        from tqdm.auto import tqdm

        from lightx2v.loading.components import load_component, load_dit
        from lightx2v.models.wan.tokenizer import WanTokenizer
        from lightx2v.runtime.engine import apply_engine, quant_on_load

        staging, dt = engine.staging_device(), engine.dtype
        dits = [n for n in cls.transformer_names if n in mc.files]
        experts = present_experts_of(cls, dits)
        parts = {}
        bar = tqdm(dits + [c.name for c in mc.spec.components], desc="load", disable=not progress, leave=False)
        for name in bar:
            bar.set_postfix_str(name)
            if name in dits:  # "dit" is the default DiT; another (Wan2.2's "dit_2") is named
                named = {} if name == "dit" else {"name": name}
                parts[name] = load_dit(mc, staging, dt, quant=quant_on_load(engine, name, experts), **named)
            else:
                parts[name] = load_component(mc, name, staging, dt)
        vae_dtype = torch.float32
        for name in ("vae", "tiny_vae"):
            if engine.vae_dtype is not None and parts.get(name) is not None:  # the engine's VAE precision
                parts[name], vae_dtype = parts[name].to(engine.vae_dtype), engine.vae_dtype
        channels_last = engine.vae_channels_last
        if channels_last is None:  # measured faster on CUDA in fp32 and bf16; not on the CPU
            channels_last = engine.torch_device().type == "cuda"
        if channels_last and parts.get("vae") is not None:  # the decoder's layout (VAEDecode)
            parts["vae"].set_memory_format(True)
        tokenizer = WanTokenizer.from_folder(mc.files["tokenizer"], text_len=mc.dit.text_len)
        pipe = cls(mc, engine, tokenizer=tokenizer, progress=progress, vae_dtype=vae_dtype, **parts)
        apply_engine(pipe, engine)
        return pipe

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """-> [B, text_len, dim]: each prompt's states trimmed to its length, zero-padded (as the reference)."""
        from lightx2v.models.wan.t5 import encode_text

        ids, mask, dropped = self.tokenizer.encode(prompts)
        default_neg = self.model_config.defaults.negative_prompt
        for i, (what, n) in enumerate(zip(("the prompt", "the negative prompt"), dropped)):
            if n and not (i == 1 and prompts[1] == default_neg):  # the checkpoint's own negative prompt: as it ships
                warnings.warn(f"{what} is longer than the text encoder reads ({self.tokenizer.text_len} tokens): "
                              f"its last {n} token(s) were dropped; shorten it to keep them", stacklevel=2)
        with placed(self, "text_encoder"):
            te = next(self.text_encoder.parameters()).device  # the CPU with text_encoder_device="cpu"
            states = [s.to(self.device) for s in encode_text(self.text_encoder, ids.to(te), mask.to(te))]
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
            pixels = torch.cat([preprocess_official(to_signed_tensor(im)[None], mc.arch.clip) for im in images])
        else:
            pixels = preprocess_diffusers(images, mc.arch.image_processor)
        dtype = next(self.clip.parameters()).dtype
        tokens = self.clip(pixels.to(self.device, dtype))    # [n, 257, 1280]
        return tokens.reshape(1, -1, tokens.shape[-1])

    def condition_on_images(self, p: SamplingParams):
        from lightx2v.pipelines.wan_image import build_condition

        def encode_video(video):
            with placed(self, "vae"):  # with encoder offload: the VAE on the device for this call only
                return self.vae.encode(video)

        def encode_clip(images):
            with placed(self, "clip"):  # then the CLIP tower, never both at once (a small GPU)
                return self.encode_images(images)

        return build_condition(
            image=p.image, last_image=p.last_image, height=p.height, width=p.width, num_frames=p.num_frames,
            mode=p.resize_mode, convention=self.model_config.layout, encode_video=encode_video,
            encode_clip=None if self.clip is None else encode_clip, device=self.device, vae_dtype=self.vae_dtype,
        )

    def condition(self, p: SamplingParams, context: torch.Tensor, neg: Optional[torch.Tensor]) -> Conditioning:
        """The DiT inputs of both CFG branches (text, and the image's when there is one)."""
        size, clip_fea, y = (p.height, p.width), None, None
        if p.image is not None:
            c = self.condition_on_images(p)
            size, clip_fea, y = (c.height, c.width), c.clip_fea, c.y
        return Conditioning(DiTInputs(context, clip_fea, y), None if neg is None else DiTInputs(neg, clip_fea, y), size)

    def uses_cfg(self, p: SamplingParams) -> bool:
        """Whether any step runs the negative branch (a scale of 1 needs none)."""
        return p.guidance_scale != 1.0 or p.guidance_scale_2 not in (None, 1.0)

    def guidance(self, p: SamplingParams) -> Guidance:
        from lightx2v.runtime.parallel import guidance_kw

        return Guidance(scale=p.guidance_scale, **guidance_kw(self))

    def expert_rule(self, scheduler) -> Optional[Callable[[int, float], Optional[str]]]:
        """expert_for(step, timestep) of `denoise` (None: one expert)."""
        return None

    def expert_model(self, ctx: StepContext):
        """The DiT that runs the step `ctx` describes."""
        return self.components[self.expert_component(ctx.expert)]

    def expert_component(self, expert: Optional[str]) -> str:
        """The component name of an expert (`expert_components`; "dit" for one-DiT models)."""
        return "dit" if expert is None else self.expert_components[expert]

    def after_step(self, sched, rule, fix) -> Optional[Callable[[int, torch.Tensor], torch.Tensor]]:
        """The loop's after_step hook: the conditioning's latent fix (Wan2.2 TI2V's first frame) and,
        with model offload, the next expert's prefetch one step before the switch."""
        offload = getattr(self, "offload", None)
        experts = None
        if offload is not None and rule is not None:
            experts = [rule(i, float(t)) for i, t in enumerate(sched.timesteps)]
        if fix is None and experts is None:
            return None

        def hook(i: int, x: torch.Tensor) -> torch.Tensor:
            if experts is not None and i + 2 < len(experts) and experts[i + 2] != experts[i + 1]:
                offload.prefetch(self.expert_component(experts[i + 2]))  # copied during step i + 1
            return x if fix is None else fix(x)

        if experts is not None and len(experts) > 1 and experts[1] != experts[0]:
            offload.prefetch(self.expert_component(experts[1]))  # a switch after the first step
        return hook

    def make_scheduler(self, p: SamplingParams):
        from lightx2v.pipelines.request import build_scheduler

        return build_scheduler(self.model_config.defaults, p, self.device)

    def prepare_latents(self, p: SamplingParams, size: tuple[int, int]) -> tuple[torch.Tensor, int | None]:
        """Initial noise [1, C, T', h', w'] float32 (the family's Geometry: [1, 16, T', h/8, w/8] for Wan2.1):
        given `latents`, or seeded (CPU generator, so the same seed gives the same video on any device)."""
        shape = self.geometry.latent_shape(p.num_frames, *size)
        if p.latents is not None:
            if tuple(p.latents.shape) != shape:
                raise InputError(f"latents must have shape {list(shape)} for {size[1]}x{size[0]}, {p.num_frames} frames; got {list(p.latents.shape)}")
            return p.latents.to(self.device, torch.float32), p.seed
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        if self.parallel is not None:  # (parallel) every rank draws rank 0's noise
            seed = self.parallel.agree_seed(seed)
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device), seed

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: DiTInputs, ctx: StepContext) -> torch.Tensor:
        dtype = self.engine.dtype
        cast = (lambda v: None if v is None else v.to(dtype))
        dit = self.expert_model(ctx)
        t = t.float()
        if c.clean_frames:  # per-token timesteps [B, L], 0 on the clean frames' tokens
            from lightx2v.models.wan.dit import token_timesteps

            t = token_timesteps(t, dit.token_grid(x.shape[2:]), clean_frames=c.clean_frames)
        dit.step_context = ctx  # what a cache on the block stack decides from (lightx2v.runtime.cache)
        try:
            return dit(x.to(dtype), t, c.context.to(dtype), clip_fea=cast(c.clip_fea), y=cast(c.y))
        finally:
            dit.step_context = None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_chunk: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
        """float32 latents -> video [1, 3, F, H, W] in [-1, 1]. `on_chunk(pixels)` is called with each
        latent frame's pixels ([1, 3, f, H, W]) as soon as they are decoded, before the next one
        decodes (the streamed save; lightx2v.models.wan.vae_decode). A tiny VAE, when loaded, decodes instead
        (the same interface and frame count: lightx2v.models.wan.taehv)."""
        vae = self.components.get("tiny_vae")
        with placed(self, "vae" if vae is None else "tiny_vae"):
            vae = self.vae if vae is None else vae
            if self.parallel is not None and self.parallel.vae_parallel:  # (parallel) every rank decodes a part
                from lightx2v.runtime.parallel import decode

                return decode(self, vae, latents.to(self.vae_dtype), on_chunk)
            return vae.decode(latents.to(self.vae_dtype), progress=self.progress, on_chunk=on_chunk)

    # -- the whole run -------------------------------------------------------------------------
    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        """This checkpoint's rules for a filled request (images already PIL), before any weight is read:
        the task its images ask for, the frame geometry, the images' sizes, one guidance scale,
        the DiT's position limit and the trained range."""
        from lightx2v.pipelines.wan_image import check_images
        from lightx2v.runtime.memory import check_limits

        wanted = "t2v" if p.image is None else ("flf2v" if p.last_image is not None else "i2v")
        if wanted != mc.task:
            if mc.task == "t2v":
                raise InputError("this is a text-to-video checkpoint: it takes no image (use an I2V checkpoint for image-to-video)",
                                 field="image")
            if mc.task == "i2v":
                raise InputError("this is an image-to-video checkpoint: give an image" if p.image is None else
                                 "this I2V checkpoint takes one image; first-last-frame needs a Wan2.1 FLF2V checkpoint",
                                 field="image" if p.image is None else "last_image")
            raise InputError("this is a first-last-frame checkpoint: give both image and last_image",
                             field="image" if p.image is None else "last_image")
        if p.guidance_scale_2 is not None and p.guidance_scale_2 != p.guidance_scale:
            raise InputError("guidance_scale_2 is a second expert's scale; Wan2.1 models have one expert",
                             field="guidance_scale_2")
        mc.spec.geometry(mc).check(p.height, p.width, p.num_frames)
        # the DiT's position limit and (unless p.force) the trained range (lightx2v.runtime.memory)
        check_limits(mc, height=p.height, width=p.width, num_frames=p.num_frames, steps=p.num_inference_steps,
                     force=p.force)
        if p.image is not None:
            check_images(p.image, p.last_image, p.height, p.width, p.num_frames, p.resize_mode, mc.layout)

    def check_memory(self, p: SamplingParams) -> None:
        """The memory estimate of `p` against what the device has free (the weights are in place)."""
        from lightx2v.runtime.memory import check_memory

        check_memory(self.model_config, self.engine, height=p.height, width=p.width, num_frames=p.num_frames,
                     guidance_scale=p.guidance_scale, decode=p.output_type != "latent", loaded=True)

    def _stage(self, name: str, p: SamplingParams):
        """An out-of-memory inside becomes one ResourceError naming the stage (lightx2v.runtime.oom)."""
        from lightx2v.runtime.memory import describe_request
        from lightx2v.runtime.oom import out_of_memory_as_error

        return out_of_memory_as_error(name, self.device, describe_request(p.height, p.width, p.num_frames))

    @torch.no_grad()
    def __call__(self, params: SamplingParams) -> GenerationResult:
        from lightx2v.pipelines.request import prepare_request

        from lightx2v.runtime.cache import reset_caches
        from lightx2v.runtime.context_kv import reset_context_kv

        p = prepare_request(self.model_config, params)
        with self.lock:  # one generation at a time: a shared pipeline serializes
            dits = [self.components[n] for n in self.transformer_names if self.components.get(n) is not None]
            reset_context_kv(dits)  # K/V of the last generation's context (or LoRA) are never reused
            reset_caches(dits)  # nor a feature cache's residuals
            try:
                return self._run(p)
            finally:
                reset_context_kv(dits)  # and not kept after it (memory)
                reset_caches(dits)

    def _run(self, p: SamplingParams) -> GenerationResult:
        from lightx2v.pipelines.base import Counter

        self.check_memory(p)  # under the lock: what another generation holds is not free
        if self.model_config.distill is not None:
            from lightx2v.models.wan.distill import cfg_warning

            for name in ("guidance_scale", "guidance_scale_2"):  # (the second: a two-expert model's)
                g = getattr(p, name)
                if g is not None and (msg := cfg_warning(g)) is not None:
                    warnings.warn(msg.replace("guidance_scale", name, 1), stacklevel=4)
                    break
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = self.uses_cfg(p)
        with self._stage("text encoder", p):
            states = self.encode_prompt([p.prompt, p.negative_prompt] if cfg else [p.prompt])  # one T5 pass
        if not bool(torch.isfinite(states).all()):
            raise NonFiniteError(f"the text encoder produced {nonfinite_kind(states)} features (T5 overflows in "
                                 "fp16); use dtype bf16 or fp32")
        context, neg = states[:1], (states[1:] if cfg else None)
        timings["text_encoder"] = self._lap(t0)
        t1 = time.perf_counter()
        with self._stage("image encoder", p):
            c = self.condition(p, context, neg)
        size = c.size
        if p.image is not None:
            timings["image_encoder"] = self._lap(t1)

        t1 = time.perf_counter()
        counter = Counter(self.model_fn)
        with self._stage("denoise", p):
            latents, seed = self.prepare_latents(p, c.size)
            fix = c.fix
            if fix is not None:
                latents = fix(latents)
            sched = self.make_scheduler(p)
            rule = self.expert_rule(sched)
            latents = denoise(counter, sched, latents, c.cond, c.uncond, self.guidance(p), expert_for=rule,
                              after_step=self.after_step(sched, rule, fix), callback=p.callback,
                              progress=self.progress)
        timings["denoise"] = self._lap(t1)
        from lightx2v.runtime.cache import cache_stats
        from lightx2v.runtime.context_kv import reset_context_kv

        dits = [self.components[n] for n in self.transformer_names if self.components.get(n) is not None]
        reset_context_kv(dits)  # the kept cross-attention K/V (~0.6 GB at 14B I2V) are not needed by the decode
        result = GenerationResult(latents=latents, seed=seed, timings=timings, stats=cache_stats(dits, counter.stats(), timings))
        if p.output_type == "latent":
            timings["total"] = self._lap(t0)
            return result
        if self.parallel is not None and not self.parallel.writes_output:  # (parallel) rank 0 writes
            if self.parallel.vae_parallel:
                self.decode(latents)  # its part of the decode
            timings["total"] = self._lap(t0)
            return result

        decode_and_write(self, p, latents, seed, size, result)
        timings["total"] = self._lap(t0)
        return result

    def output_metadata(self, p: SamplingParams, seed: Optional[int], size: tuple[int, int]) -> dict:
        """What is recorded with the file (its container's comment tag and the `<file>.json` sidecar)."""
        from lightx2v import __version__

        mc = self.model_config
        return {
            "lightx2v": __version__, "model": str(mc.root), "family": mc.family, "task": mc.task,
            "dit_path": None if mc.dit_source is None else str(mc.dit_source.path),
            "tiny_vae": None if mc.tiny_vae is None else {"path": mc.tiny_vae.path, "kind": mc.tiny_vae.kind},
            "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": seed,
            "latents_given": p.latents is not None, "num_inference_steps": p.num_inference_steps,
            "guidance_scale": p.guidance_scale, "shift": p.shift, "solver": p.solver,
            "width": size[1], "height": size[0], "num_frames": p.num_frames, "fps": p.fps, "crf": p.crf,
            "loras": self.lora_metadata(),
        }

    def lora_metadata(self) -> list[dict]:
        """Each LoRA in use: path, strength, merged or dynamic, the DiTs it went to (and, for a
        model of experts, their expert names)."""
        by_dit = {d: e for e, d in self.experts.items()}
        out = []
        for mode, entries in (("merged", self.merged_loras), ("dynamic", self.dynamic_loras)):
            for e in entries:
                item = {"path": e.path, "strength": e.strength, "mode": mode, "dits": list(e.dits)}
                if by_dit:
                    item["experts"] = [by_dit[d] for d in e.dits if d in by_dit]
                out.append(item)
        return out

    def _lap(self, since: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since


def present_experts_of(cls, dits) -> dict[str, str]:
    """The experts (expert name -> DiT name) a pipeline class has with DiTs `dits` loaded."""
    from lightx2v.loading.lora_plan import present_experts

    return present_experts(cls.expert_components, dits)
