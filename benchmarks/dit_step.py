"""One DiT forward at full size, every engine configuration of ours beside diffusers', in one run.

Wan2.1-T2V-14B at 480P and 720P (81 frames) and Wan2.1-T2V-1.3B at 480P, random bf16 weights drawn on
the GPU (timing does not depend on their values), the same inputs for every configuration. Ours are
built once per shape and the engine's transforms are applied and undone between configurations
(attention backend per role, fused Triton kernels, fused QKV, regional compile); diffusers'
WanTransformer3DModel is loaded from the same tensors (no second copy), eager and at its best
(`compile_repeated_blocks` + the `_native_cudnn` attention backend).

For each configuration: seconds per forward (median of --repeat after a warm-up; CUDA events),
the first call's seconds (compile cost), achieved TFLOP/s, the share of the measured floor (the
forward's GEMM FLOPs at the bf16 GEMM rate measured here plus its attention FLOPs at cuDNN SDPA's
measured rate), peak GiB, and the error against our eager bf16 forward (relative L2, cosine).
The 8-bit attention also gets the cosine similarity per layer (each block's output, the error
accumulated through depth, against the lossless path run in lockstep). Batched CFG: one forward of
batch 2 against two of batch 1. Rows go to $OUT/dit_step.json and, as a markdown table, to
$OUT/dit_step.md (pasted into docs/benchmarks.md with device, date and commit).

    python benchmarks/dit_step.py --out $OUT --commit <sha>                 # all shapes
    python benchmarks/dit_step.py --shapes 14B-480p --configs eager,compiled  # a subset
    python benchmarks/dit_step.py --device cpu --shapes tiny --repeat 1       # a dry run on the CPU
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from random_weights import fill_random_

SHAPES = {  # name: (dim, ffn, heads, layers, (height, width))
    "14B-480p": (5120, 13824, 40, 40, (480, 832)),
    "14B-720p": (5120, 13824, 40, 40, (720, 1280)),
    "1.3B-480p": (1536, 8960, 12, 30, (480, 832)),
    "tiny": (128, 256, 2, 2, (64, 64)),
}
# configuration name -> what is applied to our model (diffusers rows are separate)
CONFIGS = {
    "eager": {},
    "eager_triton": {"kernels": "triton"},
    "eager_triton_fuse_qkv": {"kernels": "triton", "fuse_qkv": True},
    "compiled": {"compile": True},
    "compiled_fuse_qkv": {"compile": True, "fuse_qkv": True},
    "compiled_triton": {"compile": True, "kernels": "triton"},
    "sage8": {"self": "sage8", "kernels": "triton"},
    "compiled_sage8": {"compile": True, "self": "sage8"},
    "compiled_cfg_batched": {"compile": True, "batch": 2},
    "compiled_cudagraphs": {"compile": True, "mode": "reduce-overhead"},
    # FlashAttention-3 (an optional build: benchmarks/fa3_build.sh) on the self-attention, and on both roles
    "eager_fa3": {"self": "flash_attn3"},
    "compiled_fa3": {"compile": True, "self": "flash_attn3"},
    "compiled_fa3_all": {"compile": True, "self": "flash_attn3", "cross": "flash_attn3"},
    "compiled_fa3_fuse_qkv": {"compile": True, "self": "flash_attn3", "cross": "flash_attn3", "fuse_qkv": True},
    # cuDNN SDPA named: "auto" takes FA3 where it is installed
    "compiled_cudnn": {"compile": True, "self": "sdpa_cudnn", "cross": "sdpa_cudnn"},
    # FA3's FP8 kernel on the self-attention (lossy, opt-in: ops/fa3_fp8.py)
    "compiled_fa3fp8": {"compile": True, "self": "fa3_fp8", "cross": "flash_attn3"},
    # kernels="triton" under compile: Inductor's elementwise fusion plus the FFN's GELU epilogue
    "compiled_fa3_triton": {"compile": True, "self": "flash_attn3", "cross": "flash_attn3", "kernels": "triton"},
    "compiled_fa3fp8_triton": {"compile": True, "self": "fa3_fp8", "cross": "flash_attn3", "kernels": "triton"},
    # quantized: the DiT's block linears quantized in place (a scheme change rebuilds the bf16 model
    # from the same seed: these rows run after every float row)
    "compiled_w8a8_fp8": {"quant": "w8a8-fp8", "compile": True},
    "compiled_w8a8_fp8_triton": {"quant": "w8a8-fp8", "compile": True, "kernels": "triton"},
    "compiled_w8a8_fp8_sage8": {"quant": "w8a8-fp8", "compile": True, "self": "sage8"},
    "compiled_w8a8_fp8_triton_fuse_qkv": {"quant": "w8a8-fp8", "compile": True, "kernels": "triton", "fuse_qkv": True},
    "compiled_w8a8_fp8_triton_sage8": {"quant": "w8a8-fp8", "compile": True, "kernels": "triton", "self": "sage8"},
    "compiled_w8a8_fp8_fa3": {"quant": "w8a8-fp8", "compile": True, "self": "flash_attn3", "cross": "flash_attn3"},
    "compiled_w8a8_fp8_fa3fp8": {"quant": "w8a8-fp8", "compile": True, "self": "fa3_fp8", "cross": "flash_attn3"},
    "compiled_w8a8_fp8_fa3fp8_triton": {"quant": "w8a8-fp8", "compile": True, "self": "fa3_fp8", "cross": "flash_attn3", "kernels": "triton"},
    "compiled_w8a8_int8": {"quant": "w8a8-int8", "compile": True},
    "compiled_w8a8_int8_triton": {"quant": "w8a8-int8", "compile": True, "kernels": "triton"},
    "compiled_w8a16_fp8_triton": {"quant": "w8a16-fp8", "compile": True, "kernels": "triton"},
    "compiled_w8a16_int8_triton": {"quant": "w8a16-int8", "compile": True, "kernels": "triton"},
    "fp32": {"fp32": True},  # our fp32 path (TF32 off): the reference of the error columns; last
    "diffusers_eager": {"diffusers": True},
    "diffusers_best": {"diffusers": True, "compile": True},
}
FRAMES = 81
DEV = "cuda"


def timed(fn, repeat: int) -> tuple[torch.Tensor, float, float]:
    """(output of the first call, its seconds, median seconds of `repeat` more)."""
    def once():
        if DEV == "cpu":
            t0 = time.perf_counter(); y = fn(); return y, time.perf_counter() - t0
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); y = fn(); b.record(); torch.cuda.synchronize()
        return y, a.elapsed_time(b) / 1000

    y, first = once()
    times = sorted(once()[1] for _ in range(repeat))
    return y, first, times[len(times) // 2] if times else first


def flops(dim: int, ffn: int, layers: int, tokens: int, text: int = 512) -> tuple[float, float]:
    """(GEMM FLOPs, attention FLOPs) of one forward of batch 1 (cross-attention K/V reused)."""
    gemm = 2 * tokens * dim * dim * 4 + 2 * tokens * dim * dim * 2 + 2 * tokens * dim * ffn * 2
    attn = 4 * tokens * tokens * dim + 4 * tokens * text * dim
    return layers * gemm, layers * attn


def measure_floor(dim: int, heads: int, tokens: int) -> dict:
    """The bf16 GEMM rate at this width and cuDNN SDPA's rate at this sequence, measured now."""
    if DEV == "cpu":
        return {"gemm_tflops": float("nan"), "sdpa_tflops": float("nan")}
    from triton.testing import do_bench

    a = torch.randn(tokens, dim, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(dim, dim, device=DEV, dtype=torch.bfloat16)
    t_gemm = do_bench(lambda: a @ w, return_mode="median") / 1000
    q = torch.randn(1, heads, tokens, dim // heads, device=DEV, dtype=torch.bfloat16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        t_attn = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), return_mode="median") / 1000
    return {"gemm_tflops": 2 * tokens * dim * dim / t_gemm / 1e12, "sdpa_tflops": 4 * tokens * tokens * dim / t_attn / 1e12}


def build_ours(dim, ffn, heads, layers):
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    cfg = WanDiTConfig(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=dim, ffn_dim=ffn,
                       freq_dim=256, text_dim=4096, out_dim=16, num_heads=heads, num_layers=layers)
    with torch.device("meta"):
        m = WanModel(cfg)
    m = fill_random_(m.to_empty(device=DEV), DEV)
    keep = WanModel._keep_in_fp32
    for name, p in m.named_parameters():
        if not any(k in name for k in keep):
            p.data = p.data.to(torch.bfloat16)
    return cfg, m.eval().requires_grad_(False)


def build_diffusers(cfg, ours):
    """diffusers' model on the same weight tensors (fp32 copies only for its _keep_in_fp32_modules)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from lightx2v.models.wan.dit import dit_key_from_diffusers

    with init_empty_weights():
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads,
                                  attention_head_dim=cfg.dim // cfg.num_heads, in_channels=16, out_channels=16,
                                  text_dim=4096, freq_dim=256, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps)
    keep = tuple(getattr(WanTransformer3DModel, "_keep_in_fp32_modules", None) or ())
    sd = ours.state_dict()
    mine = {}
    for dk in m.state_dict():
        t = sd[dit_key_from_diffusers(dk)]
        want = torch.float32 if any(k in dk.split(".") for k in keep) else torch.bfloat16
        mine[dk] = t if t.dtype == want else t.to(want)
    m.load_state_dict(mine, strict=True, assign=True)
    return m.to(DEV).eval().requires_grad_(False)


def apply(model, opts: dict) -> list[str]:
    """Our engine's transforms, as apply_engine runs them, on a bare model (undone by `reset`)."""
    from lightx2v.config import CompileConfig
    from lightx2v.ops.attention import resolve_attention, set_attention_backend
    from lightx2v.runtime.context_kv import ContextKVCache
    from lightx2v.runtime.engine import compile_blocks

    done = []
    dt = torch.bfloat16
    if opts.get("quant"):
        from lightx2v.quant import QuantLinear, apply_quant

        quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
        if quantized and quantized[0].scheme.name != opts["quant"]:
            raise RuntimeError(f"the model is already {quantized[0].scheme.name} (run_shape rebuilds it first)")
        if not quantized:
            apply_quant(model, opts["quant"], compute_dtype=dt)
        done.append(f"quant {opts['quant']}")
    set_attention_backend(model, resolve_attention(opts.get("self", "auto"), torch.device(DEV), dt), "self")
    set_attention_backend(model, resolve_attention(opts.get("cross", "auto"), torch.device(DEV), dt), "cross")
    model.context_cache = ContextKVCache()
    if opts.get("fuse_qkv"):
        from lightx2v.runtime.fuse import fuse_qkv

        done.append(f"fuse_qkv {fuse_qkv(model)}")
    if opts.get("kernels"):
        from lightx2v.ops.fused import resolve_fused, set_fused_backend

        set_fused_backend(model, resolve_fused(opts["kernels"], torch.device(DEV), dt))
        done.append(f"kernels {opts['kernels']}")
    if opts.get("compile"):
        compile_blocks(model, CompileConfig(enabled=True, mode=opts.get("mode")))
        done.append("compile" + (f" {opts['mode']}" if opts.get("mode") else ""))
    return done


def reset(model) -> None:
    """Undo `apply`: eager blocks, unfused QKV, torch ops (the weights are untouched)."""
    for block in model.blocks:
        block._compiled_call_impl = None
    from lightx2v.ops.fused import get_fused, set_fused_backend
    from lightx2v.runtime.fuse import unfuse_qkv

    unfuse_qkv(model)
    set_fused_backend(model, get_fused("torch"))
    torch._dynamo.reset()


def rel_cos(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm()), float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@torch.no_grad()
def per_layer_cosine(model, x, t, ctx, backend_name: str) -> list[float]:
    """Cosine of each block's output, `backend_name` self-attention vs the lossless one, run in lockstep."""
    from lightx2v.ops.attention import resolve_attention, set_attention_backend

    lossless = resolve_attention("auto", torch.device(DEV), torch.bfloat16)
    lossy = resolve_attention(backend_name, torch.device(DEV), torch.bfloat16)
    grid = model.token_grid(x.shape[2:])
    from lightx2v.models.wan.dit_blocks import linear

    h = linear(model.patch_embedding, x).flatten(2).transpose(1, 2).contiguous().float()
    e, e0 = model.embed_time(t)
    kv = model.cross_kv(ctx.to(torch.bfloat16), None)
    rope = model.rope(grid, x.device)
    ref, out, cos = h, h, []
    for block, block_kv in zip(model.blocks, kv):
        set_attention_backend(block, lossless, "self")
        ref = block(ref, e0, block_kv, rope)
        set_attention_backend(block, lossy, "self")
        out = block(out, e0, block_kv, rope)
        cos.append(round(rel_cos(out, ref)[1], 6))
    set_attention_backend(model, lossless, "self")
    return cos


def run_shape(name: str, args, results: list, floors: dict) -> None:
    dim, ffn, heads, layers, (height, width) = SHAPES[name]
    frames = FRAMES if name != "tiny" else 5
    lat = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    tokens = lat[2] * (lat[3] // 2) * (lat[4] // 2)
    g = torch.Generator(DEV).manual_seed(1)
    x = torch.randn(lat, device=DEV, generator=g)
    t = torch.tensor([757.0], device=DEV)
    ctx = torch.randn(1, 512, 4096, device=DEV, generator=g) * 0.2
    ctx[:, 100:] = 0  # a 100-token prompt, zero-padded as the text encoder output is
    ctx = ctx.to(torch.bfloat16)
    cfg, ours = build_ours(dim, ffn, heads, layers)
    floors[name] = floor = measure_floor(dim, heads, tokens)
    f_gemm, f_attn = flops(dim, ffn, layers, tokens)
    floor_s = f_gemm / (floor["gemm_tflops"] * 1e12) + f_attn / (floor["sdpa_tflops"] * 1e12)
    print(f"== {name}: {tokens} tokens; floor {floor_s:.3f}s ({floor})", flush=True)
    outputs: dict = {}
    four: dict = {}
    diff = None
    rows = []
    state = "bf16"  # what `ours` holds: "bf16", "fp32" or a quantization scheme's name
    for cname in args.configs:
        opts = CONFIGS[cname]
        row = {"shape": name, "config": cname, "tokens": tokens}
        want = "fp32" if opts.get("fp32") else opts.get("quant", "bf16")
        if not opts.get("diffusers") and state not in ("bf16", want):  # a fresh bf16 model, same seed
            ours = None
            torch.cuda.empty_cache() if DEV == "cuda" else None
            cfg, ours = build_ours(dim, ffn, heads, layers)
            state = "bf16"
        try:
            if DEV == "cuda":
                torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
            batch = opts.get("batch", 1)
            xb, tb, cb = (x.repeat(batch, 1, 1, 1, 1), t.repeat(batch), ctx.repeat(batch, 1, 1))
            if opts.get("diffusers"):
                if diff is None:
                    diff = build_diffusers(cfg, ours)
                if opts.get("compile"):
                    diff.set_attention_backend("_native_cudnn")
                    diff.compile_repeated_blocks(fullgraph=True)
                fn = (lambda: diff(hidden_states=xb.to(torch.bfloat16), timestep=tb, encoder_hidden_states=cb,
                                   return_dict=False)[0])
            elif opts.get("fp32"):
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                ours = ours.float()
                state = "fp32"
                apply(ours, {"self": "torch_sdpa", "cross": "torch_sdpa"})
                fn = (lambda: ours(xb.float(), tb, cb.float()))
            else:
                row["applied"] = apply(ours, opts)
                state = want
                row["weight_gib"] = sum(p.numel() * p.element_size() for p in ours.blocks.parameters()) / 2**30
                fn = (lambda: ours(xb.to(torch.bfloat16), tb, cb))
            with torch.no_grad():
                y, first, sec = timed(fn, args.repeat)
            per = sec / batch
            row.update(first_s=first, s=sec, s_per_sample=per, tflops=(f_gemm + f_attn) / per / 1e12,
                       floor_share=floor_s / per, peak_gib=torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0)
            outputs[cname] = y[:1].float().cpu()
            if args.profile:
                row["profile"] = kernel_profile(fn)
            if args.four_step and batch == 1 and (cname in ("eager", "compiled") or opts.get("quant") or opts.get("self")):
                four[cname] = four_steps(lambda xx, tt: ours(xx.to(torch.bfloat16), tt, cb), x)
            if opts.get("self", "auto") != "auto" and not opts.get("compile") and args.per_layer:
                reset(ours)
                row["per_layer_cos"] = per_layer_cosine(ours, x, t, ctx, opts["self"])
        except Exception as exc:  # one failing configuration must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            if not opts.get("diffusers"):
                reset(ours)
            elif diff is not None and opts.get("compile"):
                diff = None
                torch._dynamo.reset()
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "per_layer_cos"}), flush=True)
    for row in rows:  # errors against our eager bf16 forward, and against our fp32 path where it ran
        y = outputs.get(row["config"])
        if y is not None and "eager" in outputs:
            row["rel_l2"], row["cos"] = rel_cos(y, outputs["eager"])
        if y is not None and "fp32" in outputs:
            row["rel_l2_vs_fp32"], row["cos_vs_fp32"] = rel_cos(y, outputs["fp32"])
        ref4 = four.get("compiled", four.get("eager"))
        if row["config"] in four and ref4 is not None:
            row["rel_l2_4step"], _ = rel_cos(four[row["config"]], ref4)
    results.extend(rows)
    ours = diff = None  # free this shape's models before the next
    if DEV == "cuda":
        torch.cuda.empty_cache()


# kernel name -> category, first match wins (lower-case substrings of the CUDA kernel names)
KERNEL_KINDS = (("attention", ("flash", "fmha", "attn", "sdpa", "cudnn", "sage")),
                ("gemm", ("gemm", "sm90_xmma", "cutlass", "nvjet", "_mm", "matmul", "scaled_mm")),
                ("triton (fused elementwise)", ("triton",)),
                ("copy / cast", ("copy", "cast", "elementwise_kernel", "vectorized")),
                ("reduction / norm", ("reduce", "norm")))


def kernel_profile(fn, top: int = 12) -> dict:
    """One forward under torch.profiler: GPU seconds per kernel category (KERNEL_KINDS) and the `top`
    kernels by time, so a forward's time above its floor can be attributed (GEMM, attention, the rest)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kinds: dict = {}
    kernels = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if not t or ev.key.startswith("cuda"):  # runtime API rows, not kernels
            continue
        name = ev.key.lower()
        kind = next((k for k, subs in KERNEL_KINDS if any(x in name for x in subs)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + t / 1e6
        kernels.append((t / 1e6, ev.count, kind, ev.key[:120]))
    kernels.sort(reverse=True)
    return {"by_kind_s": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "total_s": round(sum(kinds.values()), 4),
            "top": [{"s": round(t, 4), "calls": c, "kind": k, "name": n} for t, c, k, n in kernels[:top]]}


def four_steps(fn, x: torch.Tensor) -> torch.Tensor:
    """A 4-step flow-matching Euler run from noise x (sigmas 1, .75, .5, .25 -> 0): the final latents,
    for the error of a whole distilled-style run against the lossless path."""
    sig = [1.0, 0.75, 0.5, 0.25, 0.0]
    with torch.no_grad():
        for i in range(4):
            v = fn(x, torch.tensor([sig[i] * 1000.0], device=x.device))
            x = x + (sig[i + 1] - sig[i]) * v.float()
    return x.float().cpu()


def table(results: list) -> str:
    lines = ["| shape | configuration | s/forward | first call s | TFLOP/s | % of floor | peak GiB | block weights GiB | "
             "rel. L2 vs eager bf16 | cos | rel. L2 vs fp32 | rel. L2 of 4 steps vs bf16 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['config']} | failed: {r['error'][:80]} | | | | | | | | | |")
            continue
        f = (lambda k, fmt: format(r[k], fmt) if isinstance(r.get(k), float) else "")
        lines.append(f"| {r['shape']} | {r['config']} | {f('s_per_sample', '.3f')} | {f('first_s', '.1f')} | "
                     f"{f('tflops', '.0f')} | {100 * r.get('floor_share', math.nan):.0f}% | {f('peak_gib', '.1f')} | "
                     f"{f('weight_gib', '.1f')} | {f('rel_l2', '.2e')} | {f('cos', '.5f')} | {f('rel_l2_vs_fp32', '.2e')} | "
                     f"{f('rel_l2_4step', '.2e')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="14B-480p,1.3B-480p,14B-720p")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-per-layer", dest="per_layer", action="store_false")
    ap.add_argument("--profile", action="store_true", help="one profiled forward per configuration: GPU time by kernel kind")
    ap.add_argument("--four-step", action="store_true", help="also the error of a 4-step run (quantized, 8-bit attention)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    quantized = [c for c in args.configs if CONFIGS[c].get("quant")]  # they quantize in place: after the float ones
    args.configs = [c for c in args.configs if c not in quantized] + quantized
    if "fp32" in args.configs:  # it converts our model to fp32: after every bf16 configuration
        args.configs.remove("fp32")
        args.configs.append("fp32")
    results: list = []
    floors: dict = {}
    meta = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__,
            "commit": args.commit, "date": time.strftime("%Y-%m-%d")}
    try:
        import diffusers

        meta["diffusers"] = diffusers.__version__
    except ImportError:
        meta["diffusers"] = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for shape in [s for s in args.shapes.split(",") if s]:
        run_shape(shape, args, results, floors)
        (out / "dit_step.json").write_text(json.dumps({"meta": meta, "floors": floors, "rows": results}, indent=2))
    md = table(results)
    (out / "dit_step.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
