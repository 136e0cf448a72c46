"""The 8-bit linears at Wan2.1-14B shapes, every kernel choice side by side, plus the quantized T5.

Part 1 (GEMMs): the four GEMM shapes of a 14B block at 480P (M = 32,760 tokens; K x N = 5120 x 5120
for q/k/v/o and the cross-attention q/o, 5120 x 13824 and 13824 x 5120 for the FFN), each computed
as bf16 `F.linear` and as every scheme x kernels of QuantLinear (lightx2v.quant: "torch" reference
kernels, "triton" kernels of lightx2v.ops.triton.quant), eager and compiled (Inductor fuses the
torch activation quantizer). Reported: ms per GEMM (median of CUDA-event timings), TFLOP/s, and
the GEMM seconds of one forward (40 blocks x (6 square + 2 FFN GEMMs)), the activation quantizer
alone (torch vs Triton), and the relative L2 error vs bf16.

Part 2 (T5): umt5-xxl at full size (random weights), one 512-token encode in bf16 and with each
scheme on its declared linears: relative L2 of the output vs bf16, weight GiB, encode ms.

    python benchmarks/quant_gemm.py --out $OUT                 # on the GPU
    python benchmarks/quant_gemm.py --device cpu --tiny        # a dry run on the CPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SCHEMES = ("w8a8-fp8", "w8a8-int8", "w8a16-fp8", "w8a16-int8")


def timed(fn, repeat: int, dev: str) -> float:
    fn()
    if dev != "cuda":
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t) / repeat
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def gemms(args, dev: str) -> list[dict]:
    from lightx2v.ops.triton import quant as tq
    from lightx2v.quant import QuantLinear, get_scheme
    from lightx2v.quant.gemm import quantize_rows

    m = 64 if args.tiny else 32760
    shapes = {"qkvo": (5120, 5120), "ffn1": (5120, 13824), "ffn2": (13824, 5120)} if not args.tiny else \
        {"qkvo": (128, 128), "ffn1": (128, 256), "ffn2": (256, 128)}
    per_forward = {"qkvo": 6, "ffn1": 1, "ffn2": 1}
    rows = []
    g = torch.Generator(dev).manual_seed(0)
    for sname, (k, n) in shapes.items():
        x = torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16)
        lin = torch.nn.Linear(k, n, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            lin.weight.normal_(0, k ** -0.5, generator=g)
        flops = 2 * m * k * n
        with torch.no_grad():
            ref = lin(x)
            t = timed(lambda: lin(x), args.repeat, dev)
            rows.append(dict(shape=sname, m=m, k=k, n=n, config="bf16", ms=t * 1e3, tflops=flops / t / 1e12,
                             per_forward=per_forward[sname], rel_l2=0.0))
            for qd, qname in ((torch.float8_e4m3fn, "fp8"), (torch.int8, "int8")):  # the quantizer alone
                impls = [("torch", lambda: quantize_rows(x, qd)), ("triton", lambda: tq.quantize_rows(x, qd))]
                if dev == "cuda":  # Inductor's fusion of the torch quantizer (on the CPU: a C++ build, slow)
                    impls.append(("torch compiled", torch.compile(lambda: quantize_rows(x, qd))))
                for impl, fn in impls:
                    try:
                        t = timed(fn, args.repeat, dev)
                        rows.append(dict(shape=sname, m=m, k=k, n=n, config=f"quantize {qname} ({impl})", ms=t * 1e3,
                                         gbps=(x.numel() * 3) / t / 1e9))
                    except Exception as exc:
                        rows.append(dict(shape=sname, config=f"quantize {qname} ({impl})", error=str(exc)[:200]))
            for scheme in SCHEMES:
                q = QuantLinear.from_linear(lin, get_scheme(scheme))
                # compiled: the torch kernels only (Inductor fuses the quantizer; the Triton ops are opaque)
                for impl, comp in (("torch", False), ("torch", True), ("triton", False)):
                    if comp and dev != "cuda":
                        continue
                    if True:
                        name = f"{scheme} {impl}" + (" compiled" if comp else "")
                        try:
                            q.kernels = impl
                            fn = torch.compile(q) if comp else q
                            y = fn(x)
                            t = timed(lambda: fn(x), args.repeat, dev)
                            rows.append(dict(shape=sname, m=m, k=k, n=n, config=name, ms=t * 1e3,
                                             tflops=flops / t / 1e12, per_forward=per_forward[sname],
                                             rel_l2=rel(y, ref)))
                        except Exception as exc:
                            rows.append(dict(shape=sname, config=name, error=f"{type(exc).__name__}: {exc}"[:300]))
                        print(json.dumps(rows[-1]), flush=True)
                del q
        torch._dynamo.reset()
    return rows


def forward_totals(rows: list[dict], layers: int = 40) -> dict:
    """Seconds of GEMM per 14B forward for each configuration (the block GEMMs only)."""
    out: dict = {}
    for r in rows:
        if "per_forward" in r and "error" not in r:
            out.setdefault(r["config"], 0.0)
            out[r["config"]] += layers * r["per_forward"] * r["ms"] / 1e3
    return out


def t5(args, dev: str) -> list[dict]:
    from lightx2v.models.wan.t5 import UMT5Config, UMT5Encoder
    from lightx2v.quant import apply_quant
    from random_weights import fill_random_

    cfg = UMT5Config() if not args.tiny else UMT5Config(vocab_size=256, dim=64, dim_attn=64, dim_ffn=128,
                                                        num_heads=4, num_layers=2)
    rows = []
    g = torch.Generator(dev).manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, 512), device=dev, generator=g)
    mask = torch.ones(1, 512, dtype=torch.long, device=dev)
    mask[:, 120:] = 0
    ref = None
    for scheme in (None,) + SCHEMES:
        with torch.device("meta"):
            enc = UMT5Encoder(cfg)
        enc = fill_random_(enc.to_empty(device=dev), dev).to(torch.bfloat16).eval()
        with torch.no_grad():  # small residual updates: 24 random blocks at full scale turn chaotic, and
            for pname, p in enc.named_parameters():  # then any perturbation (bf16 too) decorrelates the output
                if pname.endswith(("attn.o.weight", "ffn.fc2.weight")):
                    p.mul_(0.1)
                elif pname.endswith(("attn.q.weight", "attn.k.weight")):  # T5 does not scale its logits:
                    p.mul_(0.3)  # at full scale the softmax is nearly one-hot and the output chaotic
        if scheme is not None:
            apply_quant(enc, scheme)
        gib = sum(p.numel() * p.element_size() for p in enc.parameters()) / 2**30
        for impl in (("torch", "triton") if scheme else ("torch",)):
            for m_ in enc.modules():
                if hasattr(m_, "kernels"):
                    m_.kernels = impl
            try:
                with torch.no_grad():
                    y = enc(ids, mask)[:, :120]
                    t = timed(lambda: enc(ids, mask), 3, dev)
                if ref is None:
                    ref = y
                rows.append(dict(scheme=scheme or "bf16", kernels=impl, weight_gib=gib, ms=t * 1e3, rel_l2=rel(y, ref),
                                 cos=F.cosine_similarity(y.double().flatten(), ref.double().flatten(), dim=0).item()))
            except Exception as exc:
                rows.append(dict(scheme=scheme or "bf16", kernels=impl, error=f"{type(exc).__name__}: {exc}"[:300]))
            print(json.dumps(rows[-1]), flush=True)
        enc = None
        if dev == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--parts", default="gemm,t5")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    dev = args.device
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
            "commit": args.commit, "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"meta": meta}
    if "gemm" in args.parts:
        result["gemm"] = gemms(args, dev)
        result["forward_gemm_s"] = forward_totals(result["gemm"])
        print(json.dumps(result["forward_gemm_s"], indent=1))
        (out / "quant_gemm.json").write_text(json.dumps(result, indent=2))
    if "t5" in args.parts:
        result["t5"] = t5(args, dev)
    (out / "quant_gemm.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
