"""The engine, applied in one place and in one order: `apply_engine(pipeline, EngineConfig)`.

Components are built on the meta device and loaded onto the staging device (the target device
unless the engine says otherwise); then the transforms run, each switched by its own typed
sub-config of `EngineConfig`, in this order (the reasons are the order):

    1. LoRA merge      into the float weights, before anything changes their format or place
                       (merging into a quantized layer would dequantize, merge, requantize)
    2. quantization    the declared linears (`_quant_linears`) of each DiT; when no merge came
                       before it, the loader already quantized while reading (the same result,
                       and the float model is never whole in memory): this step then checks it
    3. placement       every component to the engine's device; with offload "model" the DiTs stay
                       in pinned host memory and only the running one is on the device
                       (lightx2v.runtime.offload); with "block" / "phase" the DiTs' blocks stay in
                       pinned host memory and run through a few reused device buffers, the rest of
                       each DiT on the device (lightx2v.runtime.block_offload)
    4. dynamic LoRA    forward hooks on the final layers (quantized ones included): after
                       quantization, which replaces layers and would drop hooks
    5. fuse_qkv        self-attention q, k, v as one GEMM (lightx2v.runtime.fuse): after placement
                       (the fused tensor is made where the weights live; never with offload,
                       which moves parameters under the views) and after dynamic LoRA (hooked
                       layers are skipped; hooks added later are noticed at forward time)
    6. attention       the backend resolved per component for its device and dtype (per role:
                       self- and cross-attention)
    7. kernels         the DiT blocks' fused elementwise ops (lightx2v.ops.fused: torch | triton)
    8. context_kv      each DiT keeps its cross-attention K/V for a generation (they depend on the
                       context only; lightx2v.runtime.context_kv); before compile, outside the blocks
    9. parallel        several GPUs (lightx2v.runtime.parallel): the ranks' groups; each DiT's block
                       stack over this rank's share of the tokens and its self-attention's all-to-all
                       (Ulysses) / ring, from the model's declared `_sp_plan`; under the cache (which
                       then sees, and decides on, whole tensors: the same on every rank), before compile
   10. cache           TeaCache, MagCache, first-block, TaylorSeer (lightx2v.runtime.cache): a runner in
                       the DiT's `block_runner` seat around `run_blocks`, deciding from the step
                       context per step and CFG branch; outside the blocks, so before compile
   11. compile         last: it traces what every other transform put in place (block offload's
                       bookkeeping runs in run_blocks, outside the compiled blocks; phase offload's
                       inside them: refused together, by EngineConfig)

The pipeline exposes `components` (name -> nn.Module or None) and `transformer_names` (the DiTs:
what LoRA, quantization and compile act on, each of them: both experts of a two-expert model),
and may declare `expert_components` (expert name -> DiT name: Wan2.2 A14B's "high" -> "dit",
"low" -> "dit_2") and `dit_label(name)` (a DiT's name in messages). LoRAs go to every DiT, or to
the one a per-DiT key names (`LoraConfig.per_dit`; lightx2v.loading.lora_plan): the engine reads
the declaration and names no family. Every step records what it did, per DiT, in
`pipeline.engine_log`, and is a no-op when its config is off.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from lightx2v.config import CompileConfig, EngineConfig, LoraConfig
from lightx2v.errors import InputError

ORDER = ("lora_merge", "quant", "placement", "lora_dynamic", "fuse_qkv", "attention", "kernels", "chunking", "context_kv",
         "parallel", "cache", "compile")


def quant_on_load(engine: EngineConfig, name: Optional[str] = None,
                  experts: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The scheme the loader may apply while reading DiT `name`: quantization's own step, moved
    into loading when no earlier step (a LoRA merge into that DiT) needs its float weights.
    `name` None: any merge keeps every DiT float; `experts`: the pipeline's expert -> DiT names
    (a LoRA merged into one expert leaves the other quantized while read)."""
    lora = engine.lora
    if lora.mode != "merge" or not lora.count:
        return engine.quant.scheme
    if name is None or lora.loras:
        return None
    merged_into = {(experts or {}).get(k, k) for k in lora.per_dit}
    return None if name in merged_into else engine.quant.scheme


def _transformers(pipeline) -> list[tuple[str, nn.Module]]:
    return [(n, pipeline.components[n]) for n in pipeline.transformer_names if pipeline.components.get(n) is not None]


def _component_dtype(pipeline, name: str, engine: EngineConfig) -> torch.dtype:
    if name in pipeline.transformer_names:
        return engine.dtype
    return pipeline.model_config.spec.component(name).dtype(engine.dtype)


def _lora_plan(pipeline, loras: Sequence[tuple[str, float]], per_dit: Optional[Mapping], allow_unmatched: bool):
    """(entries, [(name, model, [(LoraWeights, strength)])] for every DiT): every file read and
    checked against every DiT it goes to before any weight or hook changes."""
    from lightx2v.loading.lora import load_lora, report_unmatched
    from lightx2v.loading.lora_plan import for_dit, lora_entries, present_experts

    dits = _transformers(pipeline)
    names = [n for n, _ in dits]
    experts = present_experts(getattr(pipeline, "expert_components", {}), names)
    entries = lora_entries(LoraConfig(tuple(loras), per_dit=per_dit or {}), names, experts)
    label = getattr(pipeline, "dit_label", lambda n: "this model")
    plan = [(name, model, [(load_lora(p, model, target=label(name), allow_empty=allow_unmatched), s)
                           for p, s in for_dit(entries, name)]) for name, model in dits]
    if not allow_unmatched:
        for _, _, weights in plan:
            report_unmatched(weights, False)  # raises before anything changes
    return entries, plan


# ---------------------------------------------------------------- the steps


def merge_loras(pipeline, loras: Sequence[tuple[str, float]] = (), allow_unmatched: bool = False,
                per_dit: Optional[Mapping[str, Sequence[tuple[str, float]]]] = None) -> list[str]:
    """Step 1: merge (path, strength) LoRAs into the DiTs' weights (no run-time cost): `loras` into
    every DiT, `per_dit` into the one its key names (a DiT or expert name, lightx2v.loading.lora_plan).
    Returns what was merged, per DiT."""
    from lightx2v.loading.lora import merge_loras_

    for name, _ in _transformers(pipeline):
        lora_set = pipeline.lora_sets.get(name)
        if lora_set is not None and lora_set.active:
            raise InputError("dynamic LoRAs are active; set_lora([]) before merging LoRAs")
    entries, plan = _lora_plan(pipeline, loras, per_dit, allow_unmatched)
    done = []
    for name, model, weights in plan:
        if weights:
            merge_loras_(model, weights, allow_unmatched=allow_unmatched)
            done.append(f"{name}: {len(weights)} LoRA(s)")
    pipeline.merged_loras += tuple(entries)
    return done


def quantize(pipeline, scheme: str, dtype: torch.dtype) -> list[str]:
    """Step 2: the declared linears of every DiT as `scheme` (layers already in it are kept)."""
    from lightx2v.quant import QuantLinear, apply_quant, get_scheme

    target = get_scheme(scheme)
    done = []
    for name, model in _transformers(pipeline):
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        if layers and all(m.scheme.name == scheme for m in layers):
            done.append(f"{name}: {len(layers)} layers ({scheme}, at load)")
            continue
        if layers and all(m.scheme.storage and m.scheme.storage == target.storage for m in layers):
            was = layers[0].scheme.name
            for m in layers:  # the same stored tensors; only the compute differs (w8a8 <-> w8a16)
                m.scheme = target
            done.append(f"{name}: {len(layers)} layers ({was} file, computed as {scheme})")
            continue
        if layers:
            raise InputError(f"the {name} is already quantized ({layers[0].scheme.name}); it cannot be quantized as {scheme}")
        apply_quant(model, scheme, compute_dtype=dtype)
        n = sum(isinstance(m, QuantLinear) for m in model.modules())
        done.append(f"{name}: {n} layers ({scheme})")
    return done


ENCODERS = (("text_encoder", "quant_text_encoder"), ("clip", "quant_image_encoder"))


def quantize_encoders(pipeline, engine: EngineConfig) -> list[str]:
    """Step 2, for the encoders: the text / image encoder's declared linears (`_quant_linears`) as
    `EngineConfig.quant_text_encoder` / `quant_image_encoder` say (after loading them in float)."""
    from lightx2v.quant import QuantLinear, apply_quant

    done = []
    for name, field in ENCODERS:
        scheme, module = getattr(engine, field), pipeline.components.get(name)
        if scheme is None or module is None:
            continue
        apply_quant(module, scheme, compute_dtype=_component_dtype(pipeline, name, engine))
        done.append(f"{name}: {sum(isinstance(m, QuantLinear) for m in module.modules())} layers ({scheme})")
    return done


def check_quant_compute(pipeline, device: torch.device) -> list[str]:
    """After placement: quantized layers whose 8-bit GEMM cannot run on `device` (a pre-quantized fp8
    file on a GPU older than sm89) compute weight-only (w8a16) instead, with a warning saying so.
    (Asking for such a scheme with `quant=` is refused before loading: lightx2v.api.make_engine.)"""
    import warnings

    from lightx2v.quant import QuantLinear, weight_only_for

    done = []
    for name, model in _transformers(pipeline):
        layers = [m for m in model.modules() if isinstance(m, QuantLinear) and m.scheme.available(device) is not None]
        if not layers:
            continue
        was, reason = layers[0].scheme.name, layers[0].scheme.available(device)
        for m in layers:
            m.scheme = weight_only_for(m.scheme)
        line = f"{name}: {len(layers)} {was} layers computed as {layers[0].scheme.name} ({reason})"
        warnings.warn(f"the {name}'s {was} weights computed as {layers[0].scheme.name} ({reason})", UserWarning,
                      stacklevel=3)
        done.append(line)
    return done


def place(pipeline, device: torch.device, skip: Sequence[str] = ()) -> None:
    """Step 3: every component on `device` (`.to(device)` only: a dtype cast would touch float8 weights);
    with model offload (lightx2v.runtime.offload) the DiTs are placed by the offload instead (`skip`)."""
    for name, module in pipeline.components.items():
        if name not in skip and module is not None and any(p.device != device for p in module.parameters()):
            pipeline.components[name] = module.to(device)


def encoders_held(pipeline, engine: EngineConfig) -> list[str]:
    """The components `place_encoders` places instead of `place`: the encoders and VAEs with
    `offload_encoders`, the text encoder with `text_encoder_device`."""
    from lightx2v.runtime.offload import ENCODER_COMPONENTS

    names = ENCODER_COMPONENTS if engine.offload_encoders else ("text_encoder",) if engine.text_encoder_device else ()
    return [n for n in names if pipeline.components.get(n) is not None]


def place_encoders(pipeline, engine: EngineConfig, device: torch.device) -> list[str]:
    """Step 3, for the encoders: the text encoder on `text_encoder_device` (the CPU: it is never on the
    GPU; the pipeline moves its input there and its output back), and with `offload_encoders` every
    other encoder / VAE in host memory, placed on `device` only for its stage (Pipeline.placed)."""
    log = []
    if engine.text_encoder_device and pipeline.components.get("text_encoder") is not None:
        te = torch.device(engine.text_encoder_device)
        place(pipeline, te, skip=[n for n in pipeline.components if n != "text_encoder"])
        log.append(f"placement: text_encoder on {te}")
        if te.type == "cpu" and engine.offload.lazy_load:  # host memory is scarce: its file pages go after each use
            from lightx2v.runtime.offload import mapped_weights

            pipeline.release_pages = {"text_encoder": mapped_weights(pipeline.components["text_encoder"])}
            log[-1] += " (its weights' file pages unmapped after each encode, as lazy_load does for the DiT)"
    if engine.offload_encoders:
        from lightx2v.runtime.offload import apply_encoder_offload

        skip = ("text_encoder",) if engine.text_encoder_device else ()
        models = [n for n in encoders_held(pipeline, engine) if n not in skip]
        for n in models:  # host copies (pinned on CUDA), whatever the staging device was
            place(pipeline, torch.device("cpu"), skip=[m for m in pipeline.components if m != n])
        if models:
            apply_encoder_offload(pipeline, device, names=models)
            log.append(f"placement: offload (encoders): {', '.join(models)} in host memory, each on {device} "
                       "only while its stage runs")
    return log


def set_dynamic_lora(pipeline, loras: Sequence[tuple[str, float]] = (), allow_unmatched: bool = False,
                     per_dit: Optional[Mapping[str, Sequence[tuple[str, float]]]] = None) -> list[str]:
    """Step 4 (and `LightX2V.set_lora` later): run-time LoRA hooks on every DiT, switchable without
    reloading: `loras` on every DiT, `per_dit` on the one its key names; each DiT's set becomes
    exactly its LoRAs (none: its base output). Returns what is active, per DiT."""
    from lightx2v.runtime.lora import apply_dynamic_lora

    entries, plan = _lora_plan(pipeline, loras, per_dit, allow_unmatched)
    done = []
    for name, model, weights in plan:
        if name not in pipeline.lora_sets:
            pipeline.lora_sets[name] = apply_dynamic_lora(model, weights, allow_unmatched=allow_unmatched)
        else:
            pipeline.lora_sets[name].set(weights, allow_unmatched=allow_unmatched)
        if weights:
            done.append(f"{name}: {len(weights)} LoRA(s)")
    pipeline.dynamic_loras = tuple(entries)
    return done


def fuse_qkv_step(pipeline, engine: EngineConfig) -> list[str]:
    """Step 5: q, k, v of each DiT's self-attention as one GEMM (views: no second copy). Skipped as a
    whole with offload (model, block, phase), which assigns parameters new storage behind the views."""
    from lightx2v.runtime.fuse import fuse_qkv

    dits = _transformers(pipeline)
    if engine.offload.granularity is not None:
        return [f"{name}: skipped (offload {engine.offload.granularity} moves the weights)" for name, _ in dits]
    done = []
    for name, model in dits:
        lines = fuse_qkv(model)
        if lines == ["0 self-attention layers"]:  # no fusable slots at all: a no-op, and why
            lines = [f"nothing to fuse ({type(model).__name__} has no self-attention with fusable q, k, v "
                     "slots: its attention projects each stream apart); unchanged"]
        done += [f"{name}: {line}" for line in lines]
    return done


def set_attention(pipeline, engine: EngineConfig) -> list[str]:
    """Step 6: the attention backend of each component that has attention, for its device and dtype,
    per role (a DiT's self- and cross-attention may differ: `EngineConfig.attention`)."""
    from lightx2v.config import ATTENTION_ROLES
    from lightx2v.ops.attention import attention_role, resolve_attention, set_attention_backend

    chosen = []
    for name, module in pipeline.components.items():
        if module is None:
            continue
        roles = [r for r in ATTENTION_ROLES
                 if any(hasattr(m, "attn_backend") and attention_role(m) == r for m in module.modules())]
        names = []
        for role in roles:
            backend = resolve_attention(engine.attention_for(role), engine.torch_device(),
                                        _component_dtype(pipeline, name, engine))
            set_attention_backend(module, backend, role)
            names.append(backend.name if len(roles) == 1 else f"{role} {backend.name}")
        if names:
            chosen.append(f"{name}: {', '.join(names)}")
    return chosen


def set_fused_ops(pipeline, engine: EngineConfig) -> list[str]:
    """Step 7: the DiTs' fused elementwise ops ("torch" reference, "triton" kernels; lightx2v.ops.fused),
    resolved for the engine's device and dtype, on every module with a `fused_ops` attribute; the
    same kernels on the quantized linears of the DiTs and of quantized encoders (lightx2v.quant.gemm)."""
    from lightx2v.ops.fused import resolve_fused, set_fused_backend

    chosen = []
    ops = resolve_fused(engine.kernels, engine.torch_device(), engine.dtype)
    for name, model in _transformers(pipeline):
        if set_fused_backend(model, ops):
            chosen.append(f"{name}: {ops.name}")
        elif engine.kernels != "torch":  # (a family that cannot take "triton" refuses it before loading)
            chosen.append(f"{name}: {type(model).__name__} has no fused elementwise ops; it runs as written (torch)")
    for name, field in ENCODERS:
        module = pipeline.components.get(name)
        if getattr(engine, field) is not None and module is not None:
            set_fused_backend(module, ops)
            chosen.append(f"{name} (quantized linears): {ops.name}")
    return chosen


def compile_blocks(model: nn.Module, cfg: CompileConfig) -> int:
    """Step 11: regional compile: `torch.compile` each block of the model's declared repeated blocks
    in place (`nn.Module.compile`: names and state_dict unchanged). Identical blocks share one
    compiled graph, so the first call compiles once. Returns the number of blocks compiled."""
    names = getattr(model, "_repeated_blocks", None)
    if not names:
        raise InputError(f"{type(model).__name__} declares no repeated blocks (_repeated_blocks); it cannot be compiled by region")
    kw = {"backend": cfg.backend, "fullgraph": cfg.fullgraph, "dynamic": cfg.dynamic}
    if cfg.mode is not None:
        kw["mode"] = cfg.mode
    n = 0
    for attr in names:
        for block in model.get_submodule(attr):
            block.compile(**kw)
            block._compiled_call_impl = _guarding_hooks(block._compiled_call_impl)
            n += 1
    return n


def _guarding_hooks(compiled):
    """`compiled`, traced with guards on the forward hooks of the modules inside the block.

    By default (`torch._dynamo.config.skip_nnmodule_hook_guards`) dynamo installs no guard on
    module hooks, so a compiled block keeps running the hooks it was traced with: a dynamic LoRA
    switched after the first run (`set_lora`: new hooks, other tensors, hooks added or removed)
    would silently not apply. Tracing under this patch makes a hook change a recompile of the
    blocks that changed; the patch is scoped to these calls, no global setting changes."""
    import torch._dynamo

    return torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)(compiled)


def tile_vae(vae: nn.Module, tile: int) -> str:
    """The VAE step's tiling: decode and encode in tiles of `tile` pixels, overlapping by a quarter
    (`set_tiling`); a VAE without tiles (none declares `set_tiling`) stays whole, with a warning."""
    import warnings

    from lightx2v.models.wan.vae_tiling import VAETiling

    if not hasattr(vae, "set_tiling"):
        warnings.warn(f"vae_tiling: {type(vae).__name__} has no tiled decode; it decodes whole frames",
                      UserWarning, stacklevel=3)
        return f"vae: {type(vae).__name__} has no tiled decode; untiled"
    tiling = VAETiling.of_size(tile)
    vae.set_tiling(tiling)
    return f"vae: tiled decode/encode, tile {tiling.tile} px, overlap {tiling.overlap} px"


# ---------------------------------------------------------------- the composition


def apply_engine(pipeline, engine: EngineConfig) -> list[str]:
    """Apply every transform of `engine` to the loaded `pipeline`, in `ORDER`; returns the log."""
    log = pipeline.engine_log
    lora = engine.lora
    if lora.count and lora.mode == "merge":
        log += [f"lora_merge: {d}" for d in merge_loras(pipeline, lora.loras, lora.allow_unmatched, lora.per_dit)]
    if engine.quant.scheme is not None:
        log += [f"quant: {d}" for d in quantize(pipeline, engine.quant.scheme, engine.dtype)]
    log += [f"quant: {d}" for d in quantize_encoders(pipeline, engine)]
    device = engine.torch_device()
    held = encoders_held(pipeline, engine)  # placed by place_encoders, not here
    if engine.offload.granularity == "model":
        from lightx2v.runtime.offload import apply_offload

        dits = [n for n, _ in _transformers(pipeline)]
        place(pipeline, device, skip=dits + held)
        apply_offload(pipeline, device, prefetch=engine.offload.prefetch)
        log.append(f"placement: {device}; offload (model): {', '.join(dits)} in host memory, the running one on {device}")
    elif engine.offload.granularity in ("block", "phase"):
        from lightx2v.runtime.block_offload import apply_block_offload

        place(pipeline, device, skip=[n for n, _ in _transformers(pipeline)] + held)
        off = engine.offload
        done = apply_block_offload(pipeline, device, off.granularity, off.num_buffers, prefetch=off.prefetch,
                                   lazy_load=off.lazy_load, num_disk_workers=off.num_disk_workers)
        log.append(f"placement: {device}; {done.describe(device)}")
    else:
        place(pipeline, device, skip=held)
        log.append(f"placement: {device}")
    log += place_encoders(pipeline, engine, device)
    log += [f"quant: {d}" for d in check_quant_compute(pipeline, device)]
    if lora.count and lora.mode == "dynamic":
        log += [f"lora_dynamic: {d}" for d in set_dynamic_lora(pipeline, lora.loras, lora.allow_unmatched, lora.per_dit)]
    if engine.fuse_qkv:
        log += [f"fuse_qkv: {d}" for d in fuse_qkv_step(pipeline, engine)]
    log += [f"attention: {c}" for c in set_attention(pipeline, engine)]
    log += [f"kernels: {c}" for c in set_fused_ops(pipeline, engine)]
    if engine.chunk_tokens:
        from lightx2v.runtime.chunking import apply_chunking

        for name, model in _transformers(pipeline):
            n = apply_chunking(model, engine.chunk_tokens)
            log.append(f"chunking: {name}, {n} blocks run {engine.chunk_tokens} tokens at a time"
                       if n else f"chunking: {name} has no chunked path; it runs whole")
    if engine.context_kv:
        from lightx2v.runtime.context_kv import apply_context_kv

        kept = apply_context_kv(_transformers(pipeline))
        log += [f"context_kv: {name}, cross-attention K/V once per generation" for name in kept]
        log += [f"context_kv: {name}: no-op, {type(model).__name__} has no cross-attention (joint attention: its "
                "text stream changes in every block, so there is no per-generation K/V to keep)"
                for name, model in _transformers(pipeline) if name not in kept]
    # -- parallel (EngineConfig.parallel; lightx2v.runtime.parallel) --
    if engine.parallel.enabled:
        from lightx2v.runtime.parallel import apply_parallel

        log += [f"parallel: {d}" for d in apply_parallel(pipeline, engine)]
    if engine.cache.enabled:
        from lightx2v.runtime.cache import apply_cache

        log += [f"cache: {d}" for d in apply_cache(pipeline, engine.cache)]
    if engine.compile.enabled:
        for name, model in _transformers(pipeline):
            log.append(f"compile: {name}, {compile_blocks(model, engine.compile)} blocks ({engine.compile.backend})")
    # -- the VAE's spatial tiling (EngineConfig.vae_tiling; lightx2v.models.wan.vae_tiling) --
    if engine.vae_tiling and pipeline.components.get("vae") is not None:
        log.append(tile_vae(pipeline.components["vae"], engine.vae_tile_size))
    # -- the VAE decoder's blocks (CompileConfig.vae; lightx2v.runtime.vae_compile) --
    if engine.compile.enabled and engine.compile.vae and pipeline.components.get("vae") is not None:
        from lightx2v.runtime.vae_compile import compile_vae

        log.append(f"compile: vae, {compile_vae(pipeline.components['vae'], engine.compile)} blocks ({engine.compile.backend})")
    return log
