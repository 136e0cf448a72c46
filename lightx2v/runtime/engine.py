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
                       (lightx2v.runtime.offload; later: block / phase offload, lazy load)
    4. dynamic LoRA    forward hooks on the final layers (quantized ones included): after
                       quantization, which replaces layers and would drop hooks
    5. attention       the backend resolved per component for its device and dtype
    6. parallel        (several GPUs; joins here: it wraps the block stack, under the cache)
    7. cache           (TeaCache ...; joins here: wraps `run_blocks`, reads the step context)
    8. compile         last: it traces what every other transform put in place

The pipeline exposes `components` (name -> nn.Module or None) and `transformer_names` (the DiTs:
what LoRA, quantization and compile act on). Every step records what it did in
`pipeline.engine_log`, and is a no-op when its config is off.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightx2v.config import CompileConfig, EngineConfig
from lightx2v.errors import InputError

ORDER = ("lora_merge", "quant", "placement", "lora_dynamic", "attention", "parallel", "cache", "compile")


def quant_on_load(engine: EngineConfig) -> Optional[str]:
    """The scheme the loader may apply while reading the DiT: quantization's own step, moved into
    loading when no earlier step (a LoRA merge) needs the float weights."""
    merging = engine.lora.mode == "merge" and bool(engine.lora.loras)
    return None if merging else engine.quant.scheme


def _transformers(pipeline) -> list[tuple[str, nn.Module]]:
    return [(n, pipeline.components[n]) for n in pipeline.transformer_names if pipeline.components.get(n) is not None]


def _component_dtype(pipeline, name: str, engine: EngineConfig) -> torch.dtype:
    if name in pipeline.transformer_names:
        return engine.dtype
    return pipeline.model_config.spec.component(name).dtype(engine.dtype)


# ---------------------------------------------------------------- the steps


def merge_loras(pipeline, loras: Sequence[tuple[str, float]], allow_unmatched: bool = False) -> None:
    """Step 1: merge (path, strength) LoRAs into every DiT's weights (no run-time cost)."""
    from lightx2v.loading.lora import load_lora, merge_loras_

    for _, model in _transformers(pipeline):
        lora_set = pipeline.lora_sets.get(model)
        if lora_set is not None and lora_set.active:
            raise InputError("dynamic LoRAs are active; set_lora([]) before merging LoRAs")
        weights = [(load_lora(path, model), float(s)) for path, s in loras]
        merge_loras_(model, weights, allow_unmatched=allow_unmatched)
    pipeline.merged_loras += tuple((str(p), float(s)) for p, s in loras)


def quantize(pipeline, scheme: str, dtype: torch.dtype) -> list[str]:
    """Step 2: the declared linears of every DiT as `scheme` (layers already in it are kept)."""
    from lightx2v.quant import QuantLinear, apply_quant

    done = []
    for name, model in _transformers(pipeline):
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        if layers and all(m.scheme.name == scheme for m in layers):
            done.append(f"{name}: {len(layers)} layers ({scheme}, at load)")
            continue
        if layers:
            raise InputError(f"the {name} is already quantized ({layers[0].scheme.name}); it cannot be quantized as {scheme}")
        apply_quant(model, scheme, compute_dtype=dtype)
        n = sum(isinstance(m, QuantLinear) for m in model.modules())
        done.append(f"{name}: {n} layers ({scheme})")
    return done


def place(pipeline, device: torch.device, skip: Sequence[str] = ()) -> None:
    """Step 3: every component on `device` (`.to(device)` only: a dtype cast would touch float8 weights);
    with model offload (lightx2v.runtime.offload) the DiTs are placed by the offload instead (`skip`)."""
    for name, module in pipeline.components.items():
        if name not in skip and module is not None and any(p.device != device for p in module.parameters()):
            pipeline.components[name] = module.to(device)


def set_dynamic_lora(pipeline, loras: Sequence[tuple[str, float]], allow_unmatched: bool = False) -> None:
    """Step 4 (and `LightX2V.set_lora` later): run-time LoRA hooks on every DiT, switchable without reloading."""
    from lightx2v.loading.lora import load_lora
    from lightx2v.runtime.lora import apply_dynamic_lora

    for _, model in _transformers(pipeline):
        weights = [(load_lora(path, model), float(s)) for path, s in loras]
        if model not in pipeline.lora_sets:
            pipeline.lora_sets[model] = apply_dynamic_lora(model, weights, allow_unmatched=allow_unmatched)
        else:
            pipeline.lora_sets[model].set(weights, allow_unmatched=allow_unmatched)


def set_attention(pipeline, engine: EngineConfig) -> list[str]:
    """Step 5: the attention backend of each component that has attention, for its device and dtype."""
    from lightx2v.ops.attention import resolve_attention, set_attention_backend

    chosen = []
    for name, module in pipeline.components.items():
        if module is None or not any(hasattr(m, "attn_backend") for m in module.modules()):
            continue
        backend = resolve_attention(engine.attention, engine.torch_device(), _component_dtype(pipeline, name, engine))
        set_attention_backend(module, backend)
        chosen.append(f"{name}: {backend.name}")
    return chosen


def compile_blocks(model: nn.Module, cfg: CompileConfig) -> int:
    """Step 8: regional compile: `torch.compile` each block of the model's declared repeated blocks
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
            n += 1
    return n


# ---------------------------------------------------------------- the composition


def apply_engine(pipeline, engine: EngineConfig) -> list[str]:
    """Apply every transform of `engine` to the loaded `pipeline`, in `ORDER`; returns the log."""
    log = pipeline.engine_log
    lora = engine.lora
    if lora.loras and lora.mode == "merge":
        merge_loras(pipeline, lora.loras, allow_unmatched=lora.allow_unmatched)
        log.append(f"lora_merge: {len(lora.loras)} LoRA(s)")
    if engine.quant.scheme is not None:
        log += [f"quant: {d}" for d in quantize(pipeline, engine.quant.scheme, engine.dtype)]
    device = engine.torch_device()
    if engine.offload.granularity == "model":
        from lightx2v.runtime.offload import apply_offload

        dits = [n for n, _ in _transformers(pipeline)]
        place(pipeline, device, skip=dits)
        apply_offload(pipeline, device, prefetch=engine.offload.prefetch)
        log.append(f"placement: {device}; offload (model): {', '.join(dits)} in host memory, the running one on {device}")
    else:
        place(pipeline, device)
        log.append(f"placement: {device}")
    if lora.loras and lora.mode == "dynamic":
        set_dynamic_lora(pipeline, lora.loras, allow_unmatched=lora.allow_unmatched)
        log.append(f"lora_dynamic: {len(lora.loras)} LoRA(s)")
    log += [f"attention: {c}" for c in set_attention(pipeline, engine)]
    if engine.compile.enabled:
        for name, model in _transformers(pipeline):
            log.append(f"compile: {name}, {compile_blocks(model, engine.compile)} blocks ({engine.compile.backend})")
    return log
