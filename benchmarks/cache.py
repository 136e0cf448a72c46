"""The feature cache on a 14B-shaped DiT: a CFG denoise per method at its default threshold.

Wan2.1-T2V-14B shapes at 480P x 81 frames (dim 5120, 40 heads, 32760 tokens), random bf16 weights
drawn on the GPU (benchmarks/random_weights.py; timing does not depend on them), the loop of
lightx2v.pipelines.base.denoise with sequential CFG (two forwards per step, as the references) and
the flow UniPC scheduler. For each method (none, teacache, magcache, firstblock, taylorseer, each
at its default for the t2v-14b set): wall seconds of the denoise, forwards run / skipped, and the
decision's own cost (host seconds inside the runner's decisions, per call, and as a share of one
forward). A full 50-step, 40-layer CFG run is ~280 s per method on an H200, so `--layers 8`
(default) runs 8 of the 40 blocks and the table also gives the time scaled to 40 layers (the
embeddings, head and scheduler are a few percent of a forward; the scaled figure counts them 5x).

diffusers rows (same run, same weights through benchmarks/dit_step.build_diffusers, the same loop and
inputs): its WanTransformer3DModel without a cache, with FirstBlockCacheConfig() and with
TaylorSeerCacheConfig() (`enable_cache`, each CFG branch in its own `cache_context`); diffusers does not
report the forwards its hooks skip, so those rows show every call as run.

Quality: the published thresholds' effect on the video was established by their authors on real
weights; random weights cannot re-measure it (docs/caching.md).

    python benchmarks/cache.py --out $OUT                       # H200: 50 steps, 8 layers, all methods
    python benchmarks/cache.py --device cpu --tiny --steps 6    # dry run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from random_weights import fill_random_

METHODS = ("none", "teacache", "magcache", "firstblock", "taylorseer")
# diffusers' own caches on its WanTransformer3DModel with the same weights, the same loop and inputs (the
# peer's figures in the same run): none, FirstBlockCache (its default threshold 0.05), TaylorSeer (its defaults)
DIFFUSERS = ("diffusers_none", "diffusers_firstblock", "diffusers_taylorseer")


def build(dim, ffn, heads, layers, device, dtype):
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    cfg = WanDiTConfig(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=dim, ffn_dim=ffn,
                       freq_dim=256, text_dim=4096, out_dim=16, num_heads=heads, num_layers=layers)
    with torch.device("meta"):
        m = WanModel(cfg)
    m = fill_random_(m.to_empty(device=device), device)
    for name, p in m.named_parameters():
        if not any(k in name for k in WanModel._keep_in_fp32):
            p.data = p.data.to(dtype)
    return m.eval().requires_grad_(False)


def timed_denoise(model_fn, steps: int, latents, ctx, neg, device) -> float:
    """Wall seconds of one CFG denoise (guidance 5, flow UniPC, shift 5) through `model_fn`."""
    from lightx2v.pipelines.base import Guidance, denoise
    from lightx2v.schedulers.unipc import UniPCScheduler

    sched = UniPCScheduler()
    sched.set_timesteps(steps, shift=5.0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        denoise(model_fn, sched, latents.clone(), ctx, neg, Guidance(scale=5.0), progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def diffusers_model(ours, device):
    """diffusers' WanTransformer3DModel on our model's weight tensors (benchmarks/dit_step.build_diffusers)."""
    import dit_step

    dit_step.DEV = str(device)
    return dit_step.build_diffusers(ours.config, ours)


def run_diffusers(model, method: str, steps: int, latents, ctx, neg, device) -> dict:
    """One CFG denoise through diffusers' model, with its cache hooks (`enable_cache`), each branch in its
    own cache context as diffusers' Wan pipelines do; forwards skipped are not counted by diffusers."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if getattr(model, "is_cache_enabled", False):
        model.disable_cache()
    config = {"diffusers_firstblock": FirstBlockCacheConfig, "diffusers_taylorseer": TaylorSeerCacheConfig}.get(method)
    if config is not None:
        model.enable_cache(config())
    calls = [0]

    def model_fn(x, t, cond, step_ctx):
        calls[0] += 1
        with model.cache_context(step_ctx.branch if step_ctx is not None else "cond"):
            return model(hidden_states=x.to(model.dtype), timestep=t.float(), encoder_hidden_states=cond.to(model.dtype),
                         return_dict=False)[0].float()

    wall = timed_denoise(model_fn, steps, latents, ctx, neg, device)
    return {"method": method, "describe": "-" if config is None else f"{config.__name__}()", "wall_s": wall,
            "forwards": calls[0], "run": calls[0], "skipped": 0, "decide_s": 0.0}


def run(model, method: str, steps: int, latents, ctx, neg, device) -> dict:
    from lightx2v.engine_config import CacheConfig
    from lightx2v.runtime.cache import CachedBlocks, build_method

    model.block_runner = None if method == "none" else CachedBlocks(build_method(CacheConfig(method, model=(
        "t2v-14b" if method in ("teacache", "magcache") else None))))
    calls = [0]

    def model_fn(x, t, cond, step_ctx):
        calls[0] += 1
        model.step_context = step_ctx
        try:
            return model(x.to(ctx.dtype), t.float(), cond)
        finally:
            model.step_context = None

    wall = timed_denoise(model_fn, steps, latents, ctx, neg, device)
    r = model.block_runner
    skipped = 0 if r is None else r.skipped
    return {"method": method, "describe": "-" if r is None else r.method.describe(), "wall_s": wall,
            "forwards": calls[0], "run": calls[0] - skipped, "skipped": skipped,
            "decide_s": 0.0 if r is None else r.decide_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and latents (a dry run on the CPU)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--layers", type=int, default=8, help="blocks of the 40 to run (the time is also scaled to 40)")
    ap.add_argument("--methods", default=",".join(METHODS + DIFFUSERS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--commit", default="")
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.tiny:
        dim, ffn, heads, full, (f, h, w), dtype = 128, 256, 2, 2, (2, 8, 8), torch.float32
        a.layers = min(a.layers, full)
    else:
        dim, ffn, heads, full, (f, h, w), dtype = 5120, 13824, 40, 40, (21, 60, 104), torch.bfloat16
    model = build(dim, ffn, heads, a.layers, device, dtype)
    if not a.tiny:
        from lightx2v.ops.attention import resolve_attention, set_attention_backend

        set_attention_backend(model, resolve_attention("auto", device, dtype))
    g = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 16, f, h, w, generator=g, device=device)
    ctx = torch.randn(1, 512, 4096, generator=g, device=device, dtype=dtype)
    neg = torch.randn(1, 512, 4096, generator=g, device=device, dtype=dtype)
    rows = []
    theirs = None
    for method in a.methods.split(","):
        go = run
        if method in DIFFUSERS:
            theirs = theirs if theirs is not None else diffusers_model(model, device)
            go = lambda m, *rest: run_diffusers(theirs, *rest)  # noqa: E731
        if not a.tiny:  # warm-up (kernels, allocator) outside the timed run
            go(model, method, 2, latents, ctx, neg, device)
        row = go(model, method, a.steps, latents, ctx, neg, device)
        per_forward = row["wall_s"] / max(1, row["run"])
        row["decide_us_per_call"] = 1e6 * row["decide_s"] / row["forwards"]
        row["decide_share_of_forward"] = row["decide_s"] / row["forwards"] / per_forward
        row["wall_s_scaled_to_40_layers"] = row["wall_s"] * full / a.layers
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["wall_s"] if rows and rows[0]["method"] == "none" else None
    lines = ["| method | settings | denoise s | scaled to 40 layers s | speed-up | forwards run / skipped | "
             "decision us / call | decision / forward |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{base / r['wall_s']:.2f}x" if base else "-"
        lines.append(f"| {r['method']} | {r['describe']} | {r['wall_s']:.1f} | {r['wall_s_scaled_to_40_layers']:.0f} | "
                     f"{speed} | {r['run']} / {r['skipped']} | {r['decide_us_per_call']:.0f} | "
                     f"{100 * r['decide_share_of_forward']:.3f}% |")
    table = "\n".join(lines)
    print(f"\n{a.steps} steps, CFG, {a.layers} of {full} layers, {'tiny' if a.tiny else '14B 480P x 81f'}, "
          f"{device} {a.commit}\n{table}")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "cache.json").write_text(json.dumps(rows, indent=2))
        (Path(a.out) / "cache.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
