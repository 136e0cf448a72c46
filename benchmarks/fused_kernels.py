"""The fused elementwise kernels of a Wan DiT block (lightx2v.ops.fused) against their torch reference,
and one whole 14B-shaped WanBlock with each kernel set and with fused QKV on / off.

At the Wan2.1 14B 480P shapes (B=1, L=21*30*52=32760 tokens, C=5120, 40 heads of 128; per-sample
modulation [B, 1, C]) it times, with `triton.testing.do_bench` (median):
- each op: the Triton kernel, the torch reference eager, the reference under torch.compile
  (Inductor), and the Triton op inside torch.compile (a custom op: no graph break expected);
  reports GB/s (the bytes an ideal kernel moves / time) and the max error against the reference;
- one WanBlock forward (random weights: bf16 linears, fp32 norms and modulation; self-attention
  through the "auto" attention backend, cross-attention over 512 text tokens), eager: kernels
  torch / triton x fuse_qkv off / on.
Each case runs on its own; a failing case is recorded with its error and the rest continue.
Writes fused_kernels.json under --out (default $OUT or .). About a minute on an H200.

    python benchmarks/fused_kernels.py --out $OUT          # on a GPU
    python benchmarks/fused_kernels.py --tiny              # tiny shapes on the CPU, Triton interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

FULL = dict(B=1, grid=(21, 30, 52), C=5120, H=40, ffn=13824, text=512)
TINY = dict(B=1, grid=(1, 1, 37), C=128, H=2, ffn=256, text=16)


def bench(fn, cuda: bool, rep_ms: int = 200) -> float:
    """Median milliseconds of one call."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def errors(out, ref) -> dict:
    o, r = out.float(), ref.float()
    diff = (o - r).abs()
    return {"max_abs_err": diff.max().item(), "max_rel_err": (diff.max() / r.abs().max().clamp_min(1e-30)).item(),
            "equal_fraction": (o == r).float().mean().item()}


def op_cases(s: dict, device, torch):
    """(name, bytes moved, args, call(ops, *args)) of each op at the shapes `s`."""
    from lightx2v.models.wan.dit_blocks import rope_freqs

    B, C, H = s["B"], s["C"], s["H"]
    L = s["grid"][0] * s["grid"][1] * s["grid"][2]
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(B, L, C, device=device, generator=g)
    e = 0.3 * torch.randn(B, 1, 6, C, device=device, generator=g)
    shift, scale, gate = e.unbind(2)[:3]  # strided views, as in the block
    qkv = torch.randn(B, L, 3 * C, device=device, generator=g).bfloat16()
    q = qkv[..., :C]  # a slice of a fused QKV output (row stride 3C)
    w = 1.0 + 0.1 * torch.randn(C, device=device, generator=g)
    rope = rope_freqs(s["grid"], C // H, device)
    y = torch.randn(B, L, C, device=device, generator=g).bfloat16()
    n, bf = B * L * C, torch.bfloat16
    return [
        ("norm_modulate", n * (4 + 2) + 2 * B * C * 4, (x, shift, scale),
         lambda ops, x, sh, sc: ops.norm_modulate(x, sh, sc, 1e-6, bf)),
        ("qk_norm_rope", n * (2 + 2) + L * (C // H) * 4 + C * 4, (q, w, rope),
         lambda ops, q, w, rope: ops.qk_norm_rope(q, w, 1e-6, rope, H, bf)),
        ("gated_residual", n * (4 + 2 + 4) + B * C * 4, (x, y, gate),
         lambda ops, x, y, gate: ops.gated_residual(x, y, gate)),
    ]


def run_ops(s: dict, device, cuda: bool, compile_backend: str, torch) -> dict:
    from lightx2v.ops.fused import get_fused

    ref_ops, tri_ops = get_fused("torch"), get_fused("triton")
    results = {}
    for name, nbytes, args, call in op_cases(s, device, torch):
        res = results[name] = {"bytes": nbytes}
        ref = call(ref_ops, *args)
        variants = {
            "torch_eager": lambda: call(ref_ops, *args),
            "torch_compiled": torch.compile(lambda *a: call(ref_ops, *a), backend=compile_backend, dynamic=False),
            "triton": lambda: call(tri_ops, *args),
            "triton_compiled": torch.compile(lambda *a: call(tri_ops, *a), backend=compile_backend, dynamic=False),
        }
        for label, fn in variants.items():
            try:
                f = fn if label in ("torch_eager", "triton") else (lambda fn=fn: fn(*args))
                out = f()
                ms = bench(f, cuda)
                res[label] = {"ms": ms, "GB/s": nbytes / ms / 1e6, **errors(out, ref)}
            except Exception as exc:  # keep going: one failing case must not hide the others
                res[label] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
                traceback.print_exc()
            print(f"{name:15s} {label:16s} {res[label]}", file=sys.stderr)
    return results


def build_block(s: dict, device, torch):
    from lightx2v.models.wan.dit_blocks import WanBlock

    C = s["C"]
    with torch.device(device):
        block = WanBlock(C, s["ffn"], s["H"], qk_norm=True, cross_attn_norm=True, eps=1e-6, image_input=False).eval()
    g = torch.Generator(device).manual_seed(1)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.ndim == 2 and "modulation" not in name:
                p.copy_(torch.randn(p.shape, device=device, generator=g) / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, device=device, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, device=device, generator=g))
    for m in block.modules():  # bf16 linears (the compute dtype), fp32 norms and modulation
        if isinstance(m, torch.nn.Linear):
            m.to(torch.bfloat16)
    return block


def run_block(s: dict, device, cuda: bool, torch) -> dict:
    from lightx2v.models.wan.dit_blocks import rope_freqs
    from lightx2v.ops.attention import resolve_attention, set_attention_backend
    from lightx2v.ops.fused import get_fused, set_fused_backend
    from lightx2v.runtime.fuse import fuse_qkv, unfuse_qkv

    B, C = s["B"], s["C"]
    L = s["grid"][0] * s["grid"][1] * s["grid"][2]
    block = build_block(s, device, torch)
    backend = resolve_attention("auto", device, torch.bfloat16)
    set_attention_backend(block, backend)
    g = torch.Generator(device).manual_seed(2)
    x = torch.randn(B, L, C, device=device, generator=g)
    e = 0.1 * torch.randn(B, 1, 6, C, device=device, generator=g)
    ctx = torch.randn(B, s["text"], C, device=device, generator=g)
    rope = rope_freqs(s["grid"], C // s["H"], device)
    results = {"attention": backend.name, "tokens": L}
    ref = None
    for kernels in ("torch", "triton"):
        for fused in (False, True):
            label = f"{kernels}_ops{'_fuse_qkv' if fused else ''}"
            try:
                set_fused_backend(block, get_fused(kernels))
                (fuse_qkv if fused else unfuse_qkv)(block)

                def fwd():
                    with torch.no_grad():
                        return block(x, e, ctx, None, rope)

                out = fwd()
                ref = out if ref is None else ref
                results[label] = {"ms": bench(fwd, cuda, rep_ms=1000), **errors(out, ref)}
            except Exception as exc:
                results[label] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
                traceback.print_exc()
            print(f"block {label:24s} {results[label]}", file=sys.stderr)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for fused_kernels.json")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU + Triton interpreter without a GPU)")
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            p.error("no CUDA device: run with --tiny (Triton interpreter) to check the script")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before lightx2v.ops.triton defines its kernels
    device = torch.device("cuda" if cuda else "cpu")
    s = TINY if args.tiny else FULL
    import triton

    report = {"shapes": s, "device": torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
              "torch": torch.__version__, "triton": triton.__version__}
    t0 = time.perf_counter()
    from torch._dynamo.utils import counters

    for key, fn in (("ops", lambda: run_ops(s, device, cuda, "inductor" if cuda else "aot_eager", torch)),
                    ("block", lambda: run_block(s, device, cuda, torch))):
        try:
            report[key] = fn()
        except Exception as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
            traceback.print_exc()
        if cuda:
            torch.cuda.empty_cache()
    report["graph_breaks"] = dict(counters["graph_break"])
    report["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_kernels.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
