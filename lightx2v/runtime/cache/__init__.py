"""The feature cache: the engine's `cache` step (after context_kv, before compile).

`apply_cache(pipeline, CacheConfig)` installs a `CachedBlocks` runner (base.py) as each DiT's
`block_runner`, with one method: teacache.py, magcache.py, firstblock.py, taylorseer.py (each
file: its reference, rule and defaults). `check_cache(mc, cfg)` refuses, before any weight is read,
what cannot work: a step-distilled model (4 steps without CFG: every step moves the latents far,
the rules would skip nothing or skip wrongly, the published coefficients are for the 50-step
models), and a coefficient set the checkpoint does not determine (Wan2.1 I2V 480P and 720P have the
same shapes; Wan2.2 and FLF2V have no published TeaCache / MagCache numbers: firstblock and
taylorseer need none). `reset_caches` drops every runner's state (the pipeline: at the start and
the end of each generation); `cache_stats` turns the counts into `GenerationResult.stats`.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

from lightx2v.engine_config import CacheConfig
from lightx2v.errors import InputError
from lightx2v.runtime.cache.base import CachedBlocks, CacheMethod

DIMS = {1536: "t2v-1.3b", 5120: "t2v-14b"}  # Wan2.1 T2V: model width -> coefficient set


def coefficient_set(mc) -> tuple[Optional[str], str]:
    """(the published coefficient set of this checkpoint, or None and why not)."""
    # -- hunyuanvideo-1.5 (issue 17): LightX2V's sets, by task and resolution (teacache.py / magcache.py) --
    if mc.family == "hunyuanvideo-1.5":
        res = mc.dit.ideal_resolution
        if res in ("480p", "720p"):
            return f"hy15-{mc.task}-{res}", ""
        return None, (f"LightX2V publishes HunyuanVideo-1.5 numbers for its 480p and 720p models; this DiT's "
                      f"resolution is {res or 'not stated'}: say which with model=hy15-{mc.task}-480p or -720p")
    # -- end hunyuanvideo-1.5 --
    if mc.family != "wan2.1":
        return None, f"the published TeaCache / MagCache numbers are for Wan2.1 models; this is {mc.spec.title}"
    if mc.task == "t2v" and mc.dit.dim in DIMS:
        return DIMS[mc.dit.dim], ""
    if mc.task == "i2v":
        return None, ("Wan2.1 I2V 480P and 720P checkpoints have the same shapes and different published numbers; "
                      "say which with model=i2v-480p or model=i2v-720p")
    return None, f"no published numbers for a Wan2.1 {mc.task} model of width {mc.dit.dim}"


def build_method(cfg: CacheConfig, mc=None) -> CacheMethod:
    """The method object of `cfg` for checkpoint `mc` (None: `cfg.model` must name the set)."""
    from lightx2v.runtime.cache.firstblock import FirstBlockCache
    from lightx2v.runtime.cache.magcache import MagCache
    from lightx2v.runtime.cache.taylorseer import TaylorSeer
    from lightx2v.runtime.cache.teacache import TeaCache

    if cfg.method == "firstblock":
        return FirstBlockCache(cfg.threshold)
    if cfg.method == "taylorseer":
        return TaylorSeer(cfg.interval, cfg.warmup, cfg.order)
    model = cfg.model
    found, why = coefficient_set(mc) if mc is not None else (None, "no checkpoint to read it from")
    if model is None:
        if found is None:
            raise InputError(f"cache {cfg.method} needs the model's published coefficients: {why} "
                             "(or use firstblock / taylorseer, which need none)", field="cache")
        model = found
    elif found is not None and found != model:
        warnings.warn(f"cache {cfg.method}: the {model} coefficients on a checkpoint that looks like {found}",
                      UserWarning, stacklevel=3)
    if cfg.method == "teacache":
        return TeaCache(model, cfg.threshold, cfg.ret_steps)
    return MagCache(model, cfg.threshold, cfg.max_skips, cfg.retention)


def check_cache(mc, cfg: CacheConfig) -> Optional[CacheMethod]:
    """The method `cfg` asks for on checkpoint `mc`, or one InputError (before any weight is read)."""
    if not cfg.enabled:
        return None
    if mc.distill is not None:
        raise InputError(f"cache {cfg.method} saves nothing on a step-distilled model (a few steps, no CFG: each "
                         "step is needed, and the published numbers are for the 50-step models); drop the cache",
                         field="cache")
    return build_method(cfg, mc)


def apply_cache(pipeline, cfg: CacheConfig) -> list[str]:
    """The engine's cache step: a runner on each DiT that declares a `block_runner`; returns the log."""
    method = check_cache(pipeline.model_config, cfg)
    if method is None:
        return []
    done = []
    for name in pipeline.transformer_names:
        model = pipeline.components.get(name)
        if model is None:
            continue
        if not hasattr(model, "block_runner"):
            raise InputError(f"{type(model).__name__} declares no block_runner; it cannot be cached", field="cache")
        supported = getattr(type(model), "_cache_methods", None)  # what its run_blocks boundary supports (None: all)
        if supported is not None and method.name not in supported:
            raise InputError(f"cache {method.name} is not supported by {type(model).__name__} (its block stack "
                             f"supports {', '.join(supported) or 'none'})", field="cache")
        model.block_runner = CachedBlocks(method)  # one per DiT: each expert keeps its own state
        done.append(f"{name}: {method.describe()}")
    return done


def runners(models: Iterable) -> list[CachedBlocks]:
    return [r for m in models if isinstance(r := getattr(m, "block_runner", None), CachedBlocks)]


def reset_caches(models: Iterable) -> None:
    """Drop every cached residual and count of `models`' runners (start and end of a generation)."""
    for r in runners(models):
        r.reset()


def cache_stats(models: Iterable, stats: dict, timings: Optional[dict] = None) -> dict:
    """`stats` (the loop's Counter) with the cache's counts: model_calls becomes the forwards whose
    block stack ran, model_calls_skipped the ones answered from the cache (unchanged without a cache);
    `timings["cache_decide"]`: the seconds the decisions took (within the denoise time)."""
    rs = runners(models)
    if not rs:
        return stats
    skipped = sum(r.skipped for r in rs)
    if timings is not None:
        timings["cache_decide"] = sum(r.decide_s for r in rs)
    return {**stats, "model_calls": stats["model_calls"] - skipped, "model_calls_skipped": skipped}
