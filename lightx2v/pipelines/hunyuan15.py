"""HunyuanVideo-1.5 text-to-video and image-to-video: diffusers' HunyuanVideo15Pipeline and
HunyuanVideo15ImageToVideoPipeline, through our loop (one class; the folder's task switches the image step).

    encode the prompt and the negative prompt     Qwen2.5-VL states + byT5 glyph states (models/hunyuan15/text.py)
    (i2v) encode the image                        SigLIP tokens + the image's VAE latents and mask as `y`
                                                  (models/hunyuan15/image.py); the size follows the image
                                                  unless the request gives one (`fill_from_images`)
    denoise                                       pipelines/base.py denoise: Euler on the evenly spaced, shifted
                                                  sigmas (models/hunyuan15/schedule.py), CFG (`Guidance`, the
                                                  guider's scale and rescale)
    decode, write                                 the VAE (tiled by default), mp4 (pipelines/output.py)

Design: the engine plumbing (LoRA sets, the lock, stages, timing, placement hooks, latents) is
`WanPipeline`'s, which this class extends; what differs is written here: the two text encoders, the
DiT's inputs (text and glyph states with their masks; the image-condition channels `y`, zeros for
T2V: [1, 33, T', h, w]; the SigLIP image tokens for I2V), the schedule and the request rules.
I2V uses the same prompt template, text limits, schedule and guider as T2V (diffusers' two pipelines
share them); its defaults come from the I2V folder's own scheduler/ and guider/.

Choices where the references differ, and why:
- The negative branch's glyphs: diffusers encodes the negative prompt's quoted text; the official
  pipeline encodes "" (no glyph tokens). We follow diffusers, the reference we test against; the two
  agree for the default empty negative prompt and for any negative prompt without quotes.
- crop_start (the template tokens dropped before the prompt): found in the tokenizer's rendered
  template as the official TextEncoder does (`crop_start_of`); diffusers hard-codes 108, which is what
  this gives for the released Qwen2.5-VL tokenizer.
- MeanFlow DiTs (`use_meanflow` in the transformer config: a second timestep embedding): the second
  timestep is the step's end, the next timestep, 0 for the last step, as the official pipeline and
  diffusers' HunyuanVideo15ImageToVideoPipeline pass it, for T2V too (diffusers' text-to-video
  pipeline passes none: there we follow the official one).
- The VAE decodes in tiles by default (the official pipeline tiles; diffusers does not unless asked):
  tiles of the VAE config's `sample_size` (256 px) overlapping by a quarter. A video that fits in one
  tile decodes whole, as diffusers does. `vae_tiling` / `vae_tile_size` of the engine set another size.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError, NonFiniteError
from lightx2v.pipelines.base import Counter, GenerationResult, Guidance, StepContext, denoise, nonfinite_kind
from lightx2v.pipelines.output import decode_and_write
from lightx2v.pipelines.wan import WanPipeline
from lightx2v.runtime.offload import placed


def _sparse_attention(pipe, engine: EngineConfig) -> None:
    """SSTA for a DiT trained with it (attn_mode flex-block-attn, the *_distilled_sparse releases): under
    attention "auto" its double blocks take the "ssta" backend (lightx2v.ops.ssta; the text refiner keeps
    auto's); a named backend runs dense, as asked; where ssta cannot run, dense with a warning."""
    from lightx2v.ops.attention import get_backend, set_attention_backend

    dit, asked = pipe.components["dit"], engine.attention_for("self")
    if dit.sparse is None:
        if asked == "ssta":
            _say(pipe, "dit: attention ssta: this DiT was trained dense (attn_mode flash, no SSTA settings); "
                       "its attention runs dense (SDPA)", warn=True)
        return
    s = dit.sparse
    what = f"tile {s.tile}, window {s.window}, top-k {s.topk} ({s.sampling}, lambda {s.lam})"
    if asked not in ("auto", "ssta"):
        _say(pipe, f"dit: trained with SSTA sparse attention; dense attention ({asked}) as asked")
        return
    sp = engine.parallel.ulysses * engine.parallel.ring
    if sp > 1:  # SSTA's tiles cover the whole 3-D grid; a rank holds a slice of it, and the ssta backend
        # would replace the sequence-parallel attention wrappers the engine just installed
        if asked == "ssta":
            raise InputError(f"attention 'ssta' cannot run under sequence parallelism (ulysses x ring = {sp}): its "
                             "tiles span the whole video; use attention 'auto' (dense) or cfg_parallel only",
                             field="attention")
        _say(pipe, f"dit: trained with SSTA sparse attention; dense attention under sequence parallelism "
                   f"(ulysses x ring = {sp}): slower than SSTA, and not its output", warn=True)
        return
    backend = get_backend("ssta")
    reason = backend.available(engine.torch_device(), engine.dtype)
    if reason is not None:  # only under auto: an explicit ssta that cannot run was refused by the engine
        _say(pipe, f"dit: trained with SSTA sparse attention, which cannot run here ({reason}); dense attention "
                   "instead: slower than SSTA, and not its output", warn=True)
        return
    set_attention_backend(dit.double_blocks, backend)
    _say(pipe, f"dit: SSTA sparse attention (ssta, FlexAttention) in the double blocks: {what}")


def _say(pipe, msg: str, warn: bool = False) -> None:
    if warn:
        warnings.warn(msg, stacklevel=4)
    pipe.engine_log.append(msg)


@dataclass(frozen=True)
class HunyuanInputs:
    """What the DiT is conditioned on besides x and t (one CFG branch, or both batched)."""

    text: torch.Tensor        # [B, 1000, 3584] Qwen2.5-VL states (compute dtype)
    text_mask: torch.Tensor   # [B, 1000] int64, 1 = a real token
    glyph: torch.Tensor       # [B, 256, 1472] byT5 states
    glyph_mask: torch.Tensor  # [B, 256] int64
    image: Optional[torch.Tensor] = None  # [B, 729, 1152] SigLIP states (I2V); None: T2V
    y: Optional[torch.Tensor] = None      # [B, 33, T', h, w] image latents + mask (I2V); None: zeros (T2V)

    def _fields(self) -> tuple:
        return (self.text, self.text_mask, self.glyph, self.glyph_mask, self.image, self.y)

    def cat_batch(self, other: "HunyuanInputs") -> "HunyuanInputs":
        """Both branches as one batch (batched CFG): [self, other] along dim 0."""
        return HunyuanInputs(*(None if a is None else torch.cat([a, b])
                               for a, b in zip(self._fields(), other._fields())))

    def row(self, i: int) -> "HunyuanInputs":
        return HunyuanInputs(*(None if a is None else a[i:i + 1] for a in self._fields()))


class Hunyuan15Pipeline(WanPipeline):
    """The loaded components of one HunyuanVideo-1.5 checkpoint: dit, text_encoder, text_encoder_2, vae, and
    for i2v image_encoder (SigLIP) with its feature_extractor (image processor)."""

    # (parallel) cfg_parallel, ulysses and ring (the DiT's joint plan), vae_parallel (the VAE's raw decoder)
    parallel_ready = True
    parallel_ring = True
    parallel_vae = True

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, text_encoder_2,
                 tokenizer, tokenizer_2, vae=None, image_encoder=None, feature_extractor=None, tiny_vae=None,
                 vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        from lightx2v.models.hunyuan15.text import crop_start_of

        super().__init__(model_config, engine, dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                         vae_dtype=vae_dtype, progress=progress)
        # tiny_vae: a TAEHV file (taehv1_5 / lighttaehy1_5) decodes instead of the VAE (WanPipeline.decode);
        # vae is then None for t2v (i2v still encodes its image with it)
        self.components = {"dit": dit, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "vae": vae,
                           "tiny_vae": tiny_vae}
        if image_encoder is not None:
            self.components["image_encoder"] = image_encoder
        self.tokenizer_2 = tokenizer_2
        self.feature_extractor = feature_extractor
        self.crop_start = crop_start_of(tokenizer)

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "Hunyuan15Pipeline":
        from lightx2v.loading.components import load_component, load_dit
        from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
        from lightx2v.models.hunyuan15.dit_format import load_folder_dit, load_user_dit
        from lightx2v.models.hunyuan15.encoders import add_glyph_tokens, load_feature_extractor, load_tokenizers
        from lightx2v.models.wan.vae_tiling import VAETiling
        from lightx2v.runtime.engine import apply_engine, quant_on_load

        if engine.cache.enabled:
            from lightx2v.runtime.cache import check_cache

            if engine.cache.method not in HunyuanVideo15DiT._cache_methods:
                raise InputError(f"cache {engine.cache.method} is not supported by HunyuanVideo15DiT (its block stack "
                                 f"supports {', '.join(HunyuanVideo15DiT._cache_methods)})", field="cache")
            check_cache(mc, engine.cache)
        staging, dt = engine.staging_device(), engine.dtype
        quant = quant_on_load(engine, "dit", {})
        if mc.layout == "diffusers" and mc.dit_source is None:  # diffusers keys: a whole-dict conversion
            dit = load_folder_dit(mc.files["dit"], mc.dit, device=staging, dtype=dt, quant=quant)
        elif mc.dit_source is not None:  # a --dit-path file: plain, distilled or pre-quantized (official keys)
            dit = load_user_dit(mc, device=staging, dtype=dt, quant=quant)
        else:  # the release folder's official keys
            dit = load_dit(mc, staging, dt, quant=quant)
        parts = {"dit": dit}
        for c in mc.spec.components:
            if c.needed(mc):
                parts[c.name] = load_component(mc, c.name, staging, dt)
        if mc.task == "i2v":
            parts["feature_extractor"] = load_feature_extractor(mc.files["feature_extractor"])
        vae_dtype = torch.float32
        for name in ("vae", "tiny_vae"):
            if engine.vae_dtype is not None and parts.get(name) is not None:  # the engine's VAE precision
                parts[name], vae_dtype = parts[name].to(engine.vae_dtype), engine.vae_dtype
        tokenizer, tokenizer_2 = load_tokenizers(mc.files["tokenizer"], mc.files["tokenizer_2"])
        if "glyph_tokens" in mc.files:  # the official release: google/byt5-small's tokenizer + Glyph-SDXL-v2's tokens
            add_glyph_tokens(tokenizer_2, *mc.files["glyph_tokens"])
        pipe = cls(mc, engine, tokenizer=tokenizer, tokenizer_2=tokenizer_2, vae_dtype=vae_dtype, progress=progress,
                   **parts)
        default_tiling = None
        if not engine.vae_tiling and parts.get("vae") is not None:  # the reference's default; the engine's VAE
            # step replaces it when asked (a tiny VAE decodes untiled: it is small)
            default_tiling = VAETiling.of_size(mc.arch.vae.sample_size)
            parts["vae"].set_tiling(default_tiling)
        apply_engine(pipe, engine)
        _sparse_attention(pipe, engine)
        if default_tiling is not None:
            pipe.engine_log.append(f"vae: tiled decode/encode by default (the reference's), tile {default_tiling.tile} "
                                   f"px, overlap {default_tiling.overlap} px")
        return pipe

    # -- the request ----------------------------------------------------------------------------
    @classmethod
    def fill_from_images(cls, mc: ModelConfig, p: SamplingParams) -> SamplingParams:
        """I2V, a side left None: the resolution bucket closest to the image's aspect ratio (diffusers')."""
        from lightx2v.models.hunyuan15.layouts import default_size

        if mc.task != "i2v" or p.image is None or isinstance(p.image, (list, tuple)) or (
                p.height is not None and p.width is not None):
            return p
        h, w = default_size(mc.arch.target_size, (p.image.height, p.image.width))
        return dataclasses.replace(p, height=h if p.height is None else p.height,
                                   width=w if p.width is None else p.width)

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        from lightx2v.runtime.memory import check_limits

        if mc.task == "t2v" and (p.image is not None or p.last_image is not None):
            raise InputError("this is a HunyuanVideo-1.5 text-to-video checkpoint: it takes no image", field="image")
        if mc.task == "i2v":
            if p.image is None:
                raise InputError("this is a HunyuanVideo-1.5 image-to-video checkpoint: give the first frame "
                                 "(image=..., --image)", field="image")
            if isinstance(p.image, (list, tuple)):
                raise InputError("HunyuanVideo-1.5 image-to-video takes one image, got a list", field="image")
            if p.last_image is not None:
                raise InputError("HunyuanVideo-1.5 image-to-video takes one image (the first frame), not a last "
                                 "frame", field="last_image")
        if p.solver not in ("euler", "distill"):
            raise InputError(f"HunyuanVideo-1.5 samples with the euler solver (its scheduler), or distill (LightX2V's "
                             f"4-step models), got {p.solver!r}", field="solver")
        if p.guidance_scale_2 is not None and p.guidance_scale_2 != p.guidance_scale:
            raise InputError("guidance_scale_2 is a second expert's scale; HunyuanVideo-1.5 has one DiT",
                             field="guidance_scale_2")
        mc.spec.geometry(mc).check(p.height, p.width, p.num_frames)
        check_limits(mc, height=p.height, width=p.width, num_frames=p.num_frames, steps=p.num_inference_steps,
                     force=p.force)

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> HunyuanInputs:
        """Both encoders' states for `prompts` (one batch), in the compute dtype on the device."""
        from lightx2v.models.hunyuan15.text import encode_glyphs, encode_text

        with placed(self, "text_encoder"):
            text, mask = encode_text(self.text_encoder.model, self.tokenizer, prompts, crop_start=self.crop_start)
        with placed(self, "text_encoder_2"):
            glyph, glyph_mask = encode_glyphs(self.components["text_encoder_2"], self.tokenizer_2, prompts)
        for name, states in (("text encoder", text), ("byT5 encoder", glyph)):
            if not bool(torch.isfinite(states).all()):
                raise NonFiniteError(f"the {name} produced {nonfinite_kind(states)} features; use dtype bf16 or fp32")
        dt, dev = self.engine.dtype, self.device
        return HunyuanInputs(text.to(dev, dt), mask.to(dev), glyph.to(dev, dt), glyph_mask.to(dev))

    @torch.no_grad()
    def encode_image(self, p: SamplingParams, size: tuple[int, int], latent_frames: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(SigLIP states [1, 729, 1152], y [1, 33, T', h, w]) of the request's image cropped to `size`,
        in the compute dtype on the device (models/hunyuan15/image.py)."""
        from lightx2v.models.hunyuan15.image import cover_crop, image_condition, siglip_states
        from lightx2v.pipelines.wan_image import to_signed_tensor

        image = cover_crop(p.image, *size)
        with placed(self, "image_encoder"):
            states = siglip_states(self.components["image_encoder"], self.feature_extractor, image)
        # x: [1, 3, 1, h, w] in [-1, 1], one frame
        x = to_signed_tensor(image)[None, :, None].to(self.device, self.vae_dtype)
        with placed(self, "vae"):
            latents = self.vae.encode(x)  # [1, 32, 1, h/16, w/16] float32, scaled
        if not bool(torch.isfinite(states).all()):
            raise NonFiniteError(f"the image encoder produced {nonfinite_kind(states)} features; use dtype bf16 or fp32")
        dt, dev = self.engine.dtype, self.device
        return states.to(dev, dt), image_condition(latents, latent_frames).to(dev, dt)

    def make_scheduler(self, p: SamplingParams):
        from lightx2v.models.hunyuan15.schedule import HunyuanEuler

        if p.solver == "distill":  # the 4-step distilled models' timesteps (models/hunyuan15/distill.py)
            sched = super().make_scheduler(p)
        else:
            sched = HunyuanEuler()
            sched.set_timesteps(p.num_inference_steps, shift=p.shift, device=self.device)
        self._timesteps = sched.timesteps  # what a MeanFlow DiT's second timestep reads (`model_fn`)
        return sched

    def guidance(self, p: SamplingParams) -> Guidance:
        from lightx2v.runtime.parallel import guidance_kw

        # the engine's cfg_mode, or (cfg_parallel) one branch per rank of the CFG group
        return Guidance(scale=p.guidance_scale, rescale=self.model_config.arch.guidance_rescale, **guidance_kw(self))

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: HunyuanInputs, ctx: StepContext) -> torch.Tensor:
        dt, dit = self.engine.dtype, self.dit
        # T2V: the image-condition latents and mask are zeros ([B, 32 + 1, T', h, w]), as the reference passes
        y = c.y
        if y is None and dit.config.concat_condition:
            y = x.new_zeros((x.shape[0], x.shape[1] + 1, *x.shape[2:]), dtype=dt)
        t_r = None
        if dit.config.use_meanflow:  # MeanFlow: the step's end, the next timestep (0 after the last)
            n = len(self._timesteps)
            end = self._timesteps[ctx.step + 1] if ctx.step + 1 < n else self._timesteps.new_zeros(())
            t_r = end.float().to(x.device).expand(x.shape[0])
        dit.step_context = ctx  # what a cache on the block stack decides from (lightx2v.runtime.cache)
        try:
            return dit(x.to(dt), t.float().expand(x.shape[0]), c.text, c.text_mask, c.glyph, c.glyph_mask,
                       image_embeds=c.image, y=y, t_r=t_r)
        finally:
            dit.step_context = None

    # decode: WanPipeline's: float32 latents [1, 32, T', h, w] -> video [1, 3, F, H, W] in [-1, 1] by the VAE
    # (which unscales them) or, when loaded, the tiny VAE (lightx2v.models.wan.taehv: the same frames and layout);
    # with vae_parallel every rank decodes a part (lightx2v.runtime.parallel.decode: the VAE's raw decoder)

    # -- the whole run -------------------------------------------------------------------------
    def _run(self, p: SamplingParams) -> GenerationResult:
        from lightx2v.runtime.cache import cache_stats
        from lightx2v.runtime.context_kv import reset_context_kv

        self.check_memory(p)  # under the lock (WanPipeline's: the family's MemoryProfile, spec.memory)

        if self.model_config.distill is not None:  # CFG on a model distilled without it
            from lightx2v.models.wan.distill import cfg_warning

            if (msg := cfg_warning(p.guidance_scale)) is not None:
                warnings.warn(msg, stacklevel=4)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = self.uses_cfg(p)
        with self._stage("text encoder", p):
            both = self.encode([p.prompt, p.negative_prompt] if cfg else [p.prompt])
        cond, uncond = both.row(0), (both.row(1) if cfg else None)
        timings["text_encoder"] = self._lap(t0)
        t1 = time.perf_counter()
        size = (p.height, p.width)
        counter = Counter(self.model_fn)
        if self.model_config.task == "i2v":  # the same image tokens and latents in both branches
            with self._stage("image encoder", p):
                image, y = self.encode_image(p, size, (p.num_frames - 1) // self.vae.config.ffactor_temporal + 1)
            cond = dataclasses.replace(cond, image=image, y=y)
            uncond = None if uncond is None else dataclasses.replace(uncond, image=image, y=y)
            timings["image_encoder"] = self._lap(t1)
            t1 = time.perf_counter()
        with self._stage("denoise", p):
            latents, seed = self.prepare_latents(p, size)
            latents = denoise(counter, self.make_scheduler(p), latents, cond, uncond, self.guidance(p),
                              callback=p.callback, progress=self.progress)
        timings["denoise"] = self._lap(t1)
        reset_context_kv([self.dit])
        result = GenerationResult(latents=latents, seed=seed, timings=timings,
                                  stats=cache_stats([self.dit], counter.stats(), timings))
        if p.output_type != "latent" and (self.parallel is None or self.parallel.writes_output):  # rank 0 writes
            decode_and_write(self, p, latents, seed, size, result)
        elif p.output_type != "latent" and self.parallel.vae_parallel:  # (parallel) this rank's part of the decode
            self.decode(latents)
        timings["total"] = self._lap(t0)
        return result

