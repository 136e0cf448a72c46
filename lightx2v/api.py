"""The Python API: `LightX2V.from_pretrained(...)` then `pipe.generate(...)`.

    from lightx2v import LightX2V
    pipe = LightX2V.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B", device="cuda", dtype=torch.bfloat16)
    result = pipe.generate(prompt="a cat surfing", num_frames=81, seed=0, output_path="cat.mp4")

A path that is a local folder is used as-is; anything else is taken as a Hugging Face repo id.
The layout (official or diffusers) is detected from the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lightx2v.config import (
    CompileConfig,
    EngineConfig,
    ModelConfig,
    OffloadConfig,
    SamplingParams,
    parse_dtype,
)
from lightx2v.errors import InputError
from lightx2v.pipelines.base import GenerationResult


class LightX2V:
    """A loaded generation pipeline."""

    def __init__(self, pipeline, model_config: ModelConfig, engine: EngineConfig):
        self.pipeline = pipeline
        self.model_config = model_config
        self.engine = engine

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        device: str = "cuda",
        dtype: torch.dtype | str = torch.bfloat16,
        attention: str | Mapping[str, str] = "auto",
        quant: str | None = None,
        *,
        task: str | None = None,
        dit_path: str | Path | None = None,
        dit_path_2: str | Path | None = None,
        lora: Sequence[tuple[str | Path, float]] = (),
        lora_high: Sequence[tuple[str | Path, float]] = (),
        lora_low: Sequence[tuple[str | Path, float]] = (),
        lora_mode: str = "merge",
        lora_allow_unmatched: bool = False,
        compile: bool | CompileConfig = False,
        cfg_mode: str = "sequential",
        offload: str | OffloadConfig | None = None,
        offload_buffers: int | None = None,
        lazy_load: bool = False,
        num_disk_workers: int | None = None,
        vae_dtype: torch.dtype | str | None = None,
        context_kv: bool = True,
        quant_text_encoder: str | None = None,
        quant_image_encoder: str | None = None,
        kernels: str = "torch",
        fuse_qkv: bool = False,
        offload_encoders: bool = False,
        text_encoder_device: str | None = None,
        cache: str | Mapping[str, Any] | None = None,
        max_vram: str | int | None = None,
        max_ram: str | int | None = None,
        vae_tiling: bool = False,
        vae_tile_size: int = 256,
        chunk_tokens: int = 0,
        cfg_parallel: bool = False,
        ulysses: int = 1,
        ring: int = 1,
        vae_parallel: bool = False,
        preset: str | None = None,
        tiny_vae: str | Path | None = None,
        tiny_vae_kind: str | None = None,
        cache_dir: str | Path | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        timeout: float | None = None,
        progress: bool = True,
    ) -> LightX2V:
        """Detect the checkpoint's family and layout, build the models on the meta device, load them
        (mmap) and apply the engine (lightx2v.runtime.engine, one place, one order).

        `task` ("t2v", "i2v", "flf2v"), if given, must be the checkpoint's: checked before any weight is read.
        `quant` ("w8a8-int8", "w8a8-fp8": 8-bit activations and GEMMs, fp8 needs sm89+; "w8a16-int8",
        "w8a16-fp8": weight-only) quantizes the DiT's declared linears (a pre-quantized
        file needs nothing). `dit_path`: DiT weights replacing the folder's (a distilled single file,
        ComfyUI/diffusers keys, shards, a block folder, int8/fp8 files; a two-expert model's high-noise
        expert); `dit_path_2`: the same for a two-expert model's low-noise expert (Wan2.2 A14B). `lora`: (path, strength)
        pairs, merged into the weights (`lora_mode="merge"`, no run-time cost) or kept apart
        (`"dynamic"`, switch with `set_lora`), into every DiT (both experts of Wan2.2 A14B);
        `lora_high` / `lora_low`: into the high- / low-noise expert only (a model of one DiT
        refuses them). A Wan2.2-Lightning folder (high_noise_model.safetensors +
        low_noise_model.safetensors) given in `lora` gives each file to its expert, and a file
        named `..._high_noise_lora_...` goes to the expert its name says (a warning says so).
        A LoRA key that matches nothing is an error unless `lora_allow_unmatched` (then a warning).
        `attention`: a backend name ("auto" stays lossless; "sage8" is our 8-bit kernel, lossy) or one per
        role, `{"self": "sage8", "cross": "sdpa_cudnn"}` (a role left out: "auto"). `compile`: regional torch.compile of the DiT's
        blocks (True, or a CompileConfig). `cfg_mode`: "sequential" or "batched" CFG branches.
        `offload="model"`: the DiTs stay in host memory and only the one running is on the device
        (a two-expert Wan2.2 A14B model then holds one 14B expert on the GPU; the next is prefetched).
        `offload="block"` / `"phase"`: the DiTs' blocks stay in pinned host memory and run one block
        (or one phase of a block: self-attention, cross-attention, FFN) at a time through
        `offload_buffers` (default 2) reused device buffers, the next copied while the current one
        computes (a 14B DiT in a few GB; "phase" is not combined with `compile`). `lazy_load` (with
        "block" / "phase"): the blocks are read from the checkpoint's memory-mapped files as they are
        needed, by `num_disk_workers` (default 2) threads into a few pinned buffers, instead of being
        held in host memory (needs the DiT stored in the run's dtype). An OffloadConfig gives every option.
        `vae_dtype`: the VAE's precision (default fp32, as the references; "bf16" decodes faster and in
        less memory at a small error, docs/benchmarks.md).
        `quant_text_encoder` / `quant_image_encoder`: a scheme (as `quant`) for the text encoder's /
        CLIP's block linears (umt5-xxl: 11 GB -> ~5.7 GB in 8 bits), applied after loading.
        `context_kv`: keep each DiT's cross-attention K/V for a generation instead of recomputing them
        at every step (the same numbers; ~0.4 GB per CFG branch at 14B; False frees that memory).
        `kernels`: the DiT blocks' elementwise ops: "torch" (the reference), "triton" (fused Triton
        kernels, CUDA), "auto" (triton on CUDA, else torch). `fuse_qkv`: self-attention q, k, v as one
        GEMM (same weights, viewed; quantized int8 / fp8 layers too: one activation quantization and one
        8-bit GEMM; skipped with offload, for nvfp4 layers and dynamic LoRAs).
        `offload_encoders`: the text encoder, the image encoder and the VAE stay in host memory and are put
        on the device only while their stage runs (with block offload: a 14B model on a small GPU).
        `text_encoder_device="cpu"`: the text encoder runs on the CPU (never on the GPU; slower encode).
        `cache`: a feature cache on the DiT's block stack (lightx2v.runtime.cache, docs/caching.md):
        "teacache", "magcache", "firstblock", "taylorseer", or with options, "teacache:threshold=0.2" /
        {"method": "teacache", "threshold": 0.2, "model": "t2v-14b"}; `result.stats` then counts the
        forwards skipped (`model_calls_skipped`). Refused for step-distilled models (it saves nothing).
        `max_vram="8GB"` (and `max_ram="32GB"`): the memory planner (lightx2v.runtime.planner) picks
        encoder offload, block / phase offload, VAE tiling, the text encoder's device and lazy loading,
        fastest first, so that a 480P-class request fits; it keeps the precision asked for, logs its
        choice and expected peak (`engine_log`, first line), and refuses when nothing fits.
        `vae_tiling`: the VAE decodes and encodes in overlapping tiles of `vae_tile_size` pixels
        (overlap a quarter; a multiple of 64 from 128), blended: its memory bounded by the tile, not
        the frame, at a small difference from the whole-frame decode (docs/architecture.md).
        `chunk_tokens`: the DiT blocks run their token-wise parts (projections, norms, cross-attention,
        FFN) this many tokens at a time (>= 256; 0: off): activations ~12 x dim bytes a token plus one
        chunk's instead of ~30 x dim (Wan 14B 480P: ~2 instead of ~4.7 GiB), at a small cost in speed.
        `cfg_parallel`, `ulysses`, `ring`, `vae_parallel`: several GPUs, in a torchrun launch (or with
        torch.distributed initialised; lightx2v.runtime.parallel, docs/parallel.md): the two CFG branches
        on two ranks; the DiT's tokens over `ulysses` ranks (all-to-all of heads: it must divide the
        heads) and `ring` more (ring attention); the VAE decode split over every rank. (2 if cfg_parallel)
        x ulysses x ring must be the world size; each rank runs on cuda:LOCAL_RANK; only rank 0 decodes
        and writes (`result.path` is None on the others).
        `preset`: a preset of the family (e.g. a step-distilled one) when the checkpoint does not say it is one.
        `tiny_vae`: a tiny VAE file (TAEHV, .pth or .safetensors: Wan2.1 and Wan2.2 A14B taew2_1 / LightX2V's
        lighttaew2_1; Wan2.2 TI2V-5B taew2_2 / lighttaew2_2; HunyuanVideo-1.5 taehv1_5 / lighttaehy1_5)
        that decodes instead of the VAE (much faster, a little less faithful); which release it is is
        told from its tensors, or given as `tiny_vae_kind`. An image (I2V, TI2V) is still encoded with the VAE.
        A repo id is fetched from the Hugging Face Hub (`cache_dir`, `revision`, `local_files_only`;
        `timeout`: seconds to wait for the Hub's first answer, default HF_HUB_ETAG_TIMEOUT or 10).
        """
        from lightx2v.loading.detect import detect
        from lightx2v.loading.hub import resolve_model_path

        engine = make_engine(device=device, dtype=dtype, attention=attention, quant=quant, lora=lora,
                             lora_per_dit=expert_loras(lora_high, lora_low),
                             lora_mode=lora_mode, lora_allow_unmatched=lora_allow_unmatched,
                             compile=compile, cfg_mode=cfg_mode, offload=offload, offload_buffers=offload_buffers,
                             lazy_load=lazy_load, num_disk_workers=num_disk_workers, vae_dtype=vae_dtype,
                             context_kv=context_kv, kernels=kernels, fuse_qkv=fuse_qkv,
                             quant_text_encoder=quant_text_encoder, quant_image_encoder=quant_image_encoder,
                             offload_encoders=offload_encoders, text_encoder_device=text_encoder_device,
                             cache=cache, vae_tiling=vae_tiling, vae_tile_size=vae_tile_size,
                             chunk_tokens=chunk_tokens, cfg_parallel=cfg_parallel, ulysses=ulysses, ring=ring,
                             vae_parallel=vae_parallel)
        root = resolve_model_path(path_or_repo_id, cache_dir=cache_dir, revision=revision,
                                  local_files_only=local_files_only, timeout=timeout, progress=progress)
        check_lora_files(engine)
        mc = detect(root, dit_path=dit_path, preset=preset, hints=engine.lora.paths, dit_path_2=dit_path_2)
        mc = with_tiny_vae(mc, tiny_vae, tiny_vae_kind)
        engine, plan = planned(mc, engine, max_vram, max_ram)
        pipe = cls.from_model_config(mc, engine, task=task, progress=progress)
        if plan is not None:
            pipe.pipeline.engine_log.insert(0, plan.describe())
        return pipe

    @classmethod
    def from_model_config(cls, mc: ModelConfig, engine: EngineConfig, *, task: str | None = None,
                          progress: bool = True) -> LightX2V:
        """Load a detected checkpoint (`lightx2v.loading.detect.detect`) with an engine config
        (`make_engine`): what `from_pretrained` does after detection. The CLI detects first, checks
        the request against the detected config, and only then loads. The LoRAs are checked against
        the checkpoint and routed to their DiTs first (`resolve_engine_loras`)."""
        from lightx2v.runtime.cache import check_cache

        check_task(mc, task)
        check_cache(mc, engine.cache)  # a distilled model, coefficients the checkpoint does not determine
        from lightx2v.runtime.parallel import check_parallel

        check_parallel(mc, engine.parallel)  # degrees against the heads and the launch, before loading
        engine = resolve_engine_loras(mc, engine)
        pipeline = mc.spec.pipeline().load(mc, engine, progress=progress)
        return cls(pipeline, mc, engine)

    def set_lora(self, lora: Sequence[tuple[str | Path, float]] = (), allow_unmatched: bool = False, *,
                 lora_high: Sequence[tuple[str | Path, float]] = (),
                 lora_low: Sequence[tuple[str | Path, float]] = ()) -> None:
        """Switch or re-weight LoRAs between generations without reloading the base weights:
        `lora` on every DiT, `lora_high` / `lora_low` on one expert of a two-expert model (Wan2.2
        A14B); each DiT then has exactly its LoRAs (`set_lora()` removes them all). Folders and
        expert-named files are routed as in `from_pretrained`. LoRAs merged at load stay merged."""
        from lightx2v.config import LoraConfig
        from lightx2v.loading.lora_plan import resolve_loras

        cfg = resolve_loras(self.model_config, LoraConfig(_pairs(lora), per_dit=expert_loras(lora_high, lora_low)))
        self.pipeline.set_lora(cfg.loras, allow_unmatched=allow_unmatched, per_dit=cfg.per_dit)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        image: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        shift: float | None = None,
        solver: str | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "mp4",
        output_path: str | Path | None = None,
        callback: Callable | None = None,
        *,
        guidance_scale_2: float | None = None,
        last_image: Any = None,
        resize_mode: str = "area",
        fps: int | None = None,
        video_length: int | None = None,
        resolution: tuple[int, int] | None = None,
        overwrite: bool = True,
        force: bool = False,
        crf: int | None = None,
        num_images: int | None = None,
    ) -> GenerationResult:
        """Generate one video, or images from an image model (Qwen-Image: `num_images` per prompt, one
        batch as diffusers' num_images_per_prompt; `result.images` a list of PIL images by default, or
        float32 [N, H, W, 3] for output_type "np"; a .png / .webp / .jpg output_path writes them,
        N > 1 as NAME_0.png ...; `guidance_scale` is its true CFG scale, `latents` the initial noise
        in diffusers' packed layout [N, L, 4z] or [N, z, 1, H/8, W/8]). A size, frame
        count, step count, guidance, shift, solver or fps left None is the checkpoint's default. `image` (and
        `last_image`) make it image-to-video (first-last-frame): a path, PIL image or array; for a
        Qwen-Image edit checkpoint `image` is the image to edit (a list of them for -Edit-2509/2511). `video_length` is an alias of num_frames, `resolution=(h, w)` of height/width.
        `overwrite=False` refuses an existing output file; `force=True` runs a size, frame count or
        step count far outside what the model was trained on (hard limits and memory still apply)."""
        from lightx2v.io.image import load_image

        if video_length is not None:
            num_frames = video_length
        if resolution is not None:
            if len(resolution) != 2:
                raise InputError(f"resolution must be (height, width), got {resolution!r}")
            height, width = (int(v) for v in resolution)
        params = SamplingParams(
            prompt=prompt, negative_prompt=negative_prompt,
            image=(None if image is None else [load_image(im, f"image {i + 1}") for i, im in enumerate(image)]
                   if isinstance(image, (list, tuple)) else load_image(image, "image")),  # a list: edit-plus
            last_image=None if last_image is None else load_image(last_image, "last image"),
            resize_mode=resize_mode, height=height, width=width,
            num_frames=num_frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2,
            shift=shift, solver=solver, seed=seed, latents=latents, output_type=output_type,
            output_path=None if output_path is None else str(output_path), fps=fps, callback=callback,
            overwrite=overwrite, force=force, crf=crf, num_images=num_images,
        )
        return self.pipeline(params)

    def run(self, request: SamplingParams | dict) -> GenerationResult:
        """Generate from a whole request: a `SamplingParams`, or its JSON form (`SamplingParams.to_dict`)."""
        params = request if isinstance(request, SamplingParams) else SamplingParams.from_dict(request)
        return self.pipeline(params)


def planned(mc: ModelConfig, engine: EngineConfig, max_vram, max_ram, **size):
    """(engine, plan): the memory planner's engine for `max_vram` / `max_ram` (None, None: as given),
    for a request of `size` (height, width, num_frames, guidance_scale; default: a 480P-class one)."""
    if max_vram is None:
        if max_ram is not None:
            raise InputError("max_ram is planned together with max_vram (the GPU budget); give both", field="max_ram")
        return engine, None
    from lightx2v.runtime.planner import plan_memory

    plan = plan_memory(mc, engine, max_vram, max_ram, **size)
    if plan.engine.torch_device().type == "cuda":
        expandable_segments()
    return plan.engine, plan


def expandable_segments() -> None:
    """torch's CUDA allocator grows its segments instead of caching fixed blocks (what
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True does, for this process): under a memory budget the
    freed space of one size is reused for another, instead of being lost to fragmentation."""
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError):  # an older torch or an allocator without the setting: plan as is
        pass


def make_engine(*, device: str = "cuda", dtype: torch.dtype | str = torch.bfloat16,
                attention: str | Mapping[str, str] = "auto",
                quant: str | None = None, lora: Sequence[tuple[str | Path, float]] = (),
                lora_per_dit: Mapping[str, Sequence[tuple[str | Path, float]]] | None = None, lora_mode: str = "merge",
                lora_allow_unmatched: bool = False, compile: bool | CompileConfig = False,
                cfg_mode: str = "sequential", offload: str | OffloadConfig | None = None,
                offload_buffers: int | None = None, lazy_load: bool = False,
                num_disk_workers: int | None = None, vae_dtype: torch.dtype | str | None = None, context_kv: bool = True, kernels: str = "torch",
                fuse_qkv: bool = False, quant_text_encoder: str | None = None,
                quant_image_encoder: str | None = None, offload_encoders: bool = False,
                text_encoder_device: str | None = None,
                cache: str | Mapping[str, Any] | None = None, vae_tiling: bool = False,
                vae_tile_size: int = 256, chunk_tokens: int = 0, cfg_parallel: bool = False, ulysses: int = 1,
                ring: int = 1, vae_parallel: bool = False) -> EngineConfig:
    """The EngineConfig of `from_pretrained`'s arguments, each checked before any weight is read:
    the device exists, the dtype and quantization scheme are known, the attention backend and the
    kernels run here.
    `lora_per_dit`: {DiT or expert name ("high", "low"): (path, strength) pairs} for one DiT each."""
    from lightx2v.config import ATTENTION_ROLES, LoraConfig
    from lightx2v.ops.attention import resolve_attention
    from lightx2v.ops.fused import resolve_fused

    per_dit = {k: _pairs(v) for k, v in (lora_per_dit or {}).items()}
    given = {"offload_buffers": offload_buffers, "lazy_load": lazy_load or None, "num_disk_workers": num_disk_workers}
    for name, value in given.items():  # block / phase offload's options
        if value is not None and offload not in ("block", "phase"):
            raise InputError(f"{name} is for offload 'block' or 'phase', not {offload!r}", field=name)
    if any(v is not None for v in given.values()):
        offload = OffloadConfig(offload, num_buffers=2 if offload_buffers is None else offload_buffers,
                                lazy_load=bool(lazy_load), num_disk_workers=2 if num_disk_workers is None else num_disk_workers)
    parallel, device = _parallel(device, cfg_parallel=cfg_parallel, ulysses=ulysses, ring=ring,
                                 vae_parallel=vae_parallel)
    engine = EngineConfig(device=str(device), dtype=parse_dtype(dtype), attention=attention, parallel=parallel,
                          quant=quant, compile=compile, cfg_mode=cfg_mode, offload=offload, vae_dtype=vae_dtype,
                          context_kv=bool(context_kv), kernels=kernels, fuse_qkv=fuse_qkv, cache=cache,
                          quant_text_encoder=quant_text_encoder, quant_image_encoder=quant_image_encoder,
                          offload_encoders=bool(offload_encoders), text_encoder_device=text_encoder_device,
                          vae_tiling=bool(vae_tiling), vae_tile_size=vae_tile_size, chunk_tokens=chunk_tokens,
                          lora=LoraConfig(_pairs(lora), mode=lora_mode, allow_unmatched=lora_allow_unmatched,
                                          per_dit=per_dit))
    for field, scheme in (("quant", engine.quant.scheme), ("quant_text_encoder", engine.quant_text_encoder),
                          ("quant_image_encoder", engine.quant_image_encoder)):
        if scheme is not None:
            from lightx2v.quant import get_scheme

            reason = get_scheme(scheme).available(engine.torch_device())  # unknown name: its own error
            if reason is not None:
                raise InputError(f"{field} {scheme!r} cannot run on {engine.device}: {reason}", field=field)
    for role in ATTENTION_ROLES:  # a backend that cannot run here
        resolve_attention(engine.attention_for(role), engine.torch_device(), engine.dtype)
    resolve_fused(kernels, engine.torch_device(), engine.dtype)  # kernels that cannot run here
    return engine


def _parallel(device, **degrees):
    """(ParallelConfig, this rank's device) of the API's parallel keywords: the degrees checked against
    the launch (torchrun's WORLD_SIZE), the device cuda:LOCAL_RANK, the process group made."""
    from lightx2v.config import ParallelConfig, resolve_device
    from lightx2v.runtime.parallel.state import check_world, ensure_process_group, local_device

    cfg = ParallelConfig(**degrees)
    dev = resolve_device(device)
    if not cfg.enabled:
        return cfg, dev
    check_world(cfg)
    dev = local_device(dev)
    ensure_process_group(dev)
    return cfg, dev


def expert_loras(high: Sequence[tuple[str | Path, float]] = (),
                 low: Sequence[tuple[str | Path, float]] = ()) -> dict[str, tuple[tuple[str, float], ...]]:
    """`LoraConfig.per_dit` of the LoRAs given for the high- and low-noise experts."""
    return {k: _pairs(v) for k, v in (("high", high), ("low", low)) if v}


def check_lora_files(engine: EngineConfig) -> None:
    """Every LoRA path exists (a folder only where it goes to every DiT: the family may route it)."""
    from lightx2v.loading.lora_plan import check_lora_paths

    check_lora_paths(engine.lora)


def resolve_engine_loras(mc: ModelConfig, engine: EngineConfig) -> EngineConfig:
    """`engine` with its LoRAs checked against the detected checkpoint and routed to their DiTs
    (lightx2v.loading.lora_plan.resolve_loras: an expert the model does not have is one line
    naming the field; Lightning folders and expert-named files go to their expert). No weight is read."""
    import dataclasses

    from lightx2v.loading.lora_plan import resolve_loras

    if not engine.lora.count:
        return engine
    return dataclasses.replace(engine, lora=resolve_loras(mc, engine.lora))


def with_tiny_vae(mc: ModelConfig, path: str | Path | None, kind: str | None = None) -> ModelConfig:
    """`mc` decoding with the tiny VAE file `path` (None: unchanged), checked before any weight is read
    through the family's "tiny_vae" component (lightx2v.loading.components.attach_component_file)."""
    from lightx2v.loading.components import attach_component_file

    if path is None:
        if kind is not None:
            raise InputError("tiny_vae_kind is given without a tiny VAE file; give the file too", field="tiny_vae_kind")
        return mc
    return attach_component_file(mc, "tiny_vae", path, kind=kind)


def check_task(mc: ModelConfig, task: str | None) -> None:
    """`task`, if given, must be the checkpoint's (checked before any weight is read)."""
    if task is not None and task != mc.task:
        raise InputError(f"task {task} does not fit this checkpoint: {mc.root} is a {mc.spec.title} {mc.task} model",
                         field="task")


def _pairs(loras: Sequence[tuple[str | Path, float]]) -> tuple[tuple[str, float], ...]:
    """(path, strength) pairs from the API: paths as strings, strengths checked (`_strength`)."""
    items = [loras] if isinstance(loras, (str, Path)) else list(loras)
    for item in items:
        if isinstance(item, (str, Path)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"LoRAs are given as (path, strength) pairs, e.g. [('a.safetensors', 1.0)]; got {item!r}",
                             field="lora")
    return tuple((str(Path(p)), _strength(s)) for p, s in items)


def _strength(value) -> float:
    """A LoRA strength from the API: finite, |s| <= 10 (lightx2v.loading.lora.lora_strength)."""
    from lightx2v.loading.lora import lora_strength

    return lora_strength(value)
