"""The FFN's up-projection + GELU(tanh) at Wan-14B 480P shapes: a separate GELU pass vs cuBLASLt's
GELU epilogue (`torch._addmm_activation(..., use_gelu=True)`: on CUDA the tanh form, Wan's), eager
and under torch.compile (Inductor keeps the op as a fallback, so the epilogue survives compile).

    python benchmarks/ffn_epilogue.py --out $OUT        # device, ~30 s
    python benchmarks/ffn_epilogue.py --device cpu --tokens 64 --dim 32 --ffn 48 --out /tmp/ffn   # CPU check

On the CPU `_addmm_activation` applies the exact GELU (not tanh), so the CPU run checks the script only.
Writes DIR/ffn_epilogue.json: ms per call for each variant, the error of the epilogue against the
separate pass (bf16), and the ms a 40-block forward would save.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def separate(x, w, b):
    return F.gelu(F.linear(x, w, b), approximate="tanh")


def epilogue(x, w, b):
    return torch._addmm_activation(b, x.flatten(0, -2), w.t(), use_gelu=True).unflatten(0, x.shape[:-1])


def bench(fn, device: str, reps: int = 20) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, return_mode="median")
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--ffn", type=int, default=13824)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    dt = torch.bfloat16
    g = torch.Generator(args.device).manual_seed(0)
    x = torch.randn(1, args.tokens, args.dim, device=args.device, generator=g).to(dt)
    w = (torch.randn(args.ffn, args.dim, device=args.device, generator=g) * args.dim ** -0.5).to(dt)
    b = (torch.randn(args.ffn, device=args.device, generator=g) * 0.02).to(dt)
    res: dict = {"shape": [args.tokens, args.dim, args.ffn], "device": args.device}
    ref = separate(x, w, b)
    out = epilogue(x, w, b)
    res["rel_l2_epilogue_vs_separate"] = float((out.float() - ref.float()).norm() / ref.float().norm())
    with torch.no_grad():
        for name, fn in (("separate", separate), ("epilogue", epilogue)):
            res[f"{name}_eager_ms"] = bench(lambda: fn(x, w, b), args.device)
            if args.device == "cuda":
                cf = torch.compile(fn, dynamic=False)
                cf(x, w, b)
                res[f"{name}_compiled_ms"] = bench(lambda: cf(x, w, b), args.device)
    key = "compiled_ms" if args.device == "cuda" else "eager_ms"
    res["saved_per_40_blocks_ms"] = 40 * (res[f"separate_{key}"] - res[f"epilogue_{key}"])
    print(json.dumps(res, indent=1))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ffn_epilogue.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
