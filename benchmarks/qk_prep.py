"""Wan's q/k preparation before the self-attention -- RMSNorm across the 5,120 channels (with weight),
3D RoPE on each head's channel pairs, one cast to bf16 -- at 14B 480P shapes, three ways:

  inductor        the torch reference (lightx2v.ops.fused "torch"; apply_rope's compiled form
                  x * cos2 + swap(x) * sin2) under torch.compile, q and k in one graph
  inductor_stack  the form apply_rope had before (pairs rotated, then re-interleaved with
                  torch.stack), kept here as the baseline: the same math, 2x slower under Inductor
  triton          our Triton kernel (lightx2v.ops.triton.norms.qk_norm_rope: contiguous [pairs, 2]
                  tiles split / joined in registers)

Session 7 (docs/benchmarks.md): stack 1.185 ms, the x*cos2 + swap(x)*sin2 form 0.579 ms, the Triton
kernel with strided even/odd loads 1.028 ms and with [pairs, 2] tiles 0.778 ms, for q and k of one
block; an ideal pass moves 4 x 32760 x 5120 x 2 bytes (1.34 GB: ~0.3 ms).
Prints and writes DIR/qk_prep.json: ms per block (q and k), GB/s, agreement with `inductor`.

    PYTHONPATH=$PWD python benchmarks/qk_prep.py --out $OUT                 # device, ~30 s
    TRITON_INTERPRET=1 python benchmarks/qk_prep.py --tiny --out /tmp/qk   # CPU: checks the forms agree
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _stack_one(x, w, rope, heads):
    normed = F.rms_norm(x.float(), (x.shape[-1],), w.float(), 1e-6).unflatten(-1, (heads, -1))  # [B, L, H, D]
    pairs = normed.unflatten(-1, (-1, 2))
    cos, sin = rope[..., 0], rope[..., 1]
    re, im = pairs[..., 0], pairs[..., 1]
    return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).to(torch.bfloat16)


def stack_form(q, k, wq, wk, rope, heads):
    return _stack_one(q, wq, rope, heads), _stack_one(k, wk, rope, heads)


def _ours(kernels: str):
    from lightx2v.ops.fused import get_fused

    op = get_fused(kernels).qk_norm_rope

    def both(q, k, wq, wk, rope, heads):
        return op(q, wq, 1e-6, rope, heads, torch.bfloat16), op(k, wk, 1e-6, rope, heads, torch.bfloat16)

    return both


def bench(fn, cuda: bool) -> float:
    if cuda:
        from triton.testing import do_bench

        return do_bench(fn, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    from lightx2v.models.wan.dit_blocks import rope_freqs

    cuda = torch.cuda.is_available() and not args.tiny
    dev = "cuda" if cuda else "cpu"
    grid, C, H = ((21, 30, 52), 5120, 40) if not args.tiny else ((2, 3, 5), 256, 4)
    L = grid[0] * grid[1] * grid[2]
    g = torch.Generator(dev).manual_seed(0)
    qkv = torch.randn(1, L, 3 * C, device=dev, generator=g).to(torch.bfloat16)
    q, k = qkv[..., :C], qkv[..., C:2 * C]  # slices of a fused QKV output, as when fuse_qkv is on
    q, k = q.contiguous(), k.contiguous()  # separate GEMM outputs (the default)
    wq, wk = (1.0 + 0.1 * torch.randn(C, device=dev, generator=g) for _ in range(2))
    rope = rope_freqs(grid, C // H, dev)
    variants = {"inductor": _ours("torch"), "inductor_stack": stack_form, "triton": _ours("triton")}
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "L": L, "C": C, "H": H, "rows": {}}
    with torch.no_grad():
        ref = variants["inductor"](q, k, wq, wk, rope, H)  # eager: the reference
        for name, fn in variants.items():
            row = res["rows"][name] = {}
            try:
                f = torch.compile(fn, dynamic=False) if name.startswith("inductor") and cuda else fn
                out = f(q, k, wq, wk, rope, H)
                row["max_abs_err_vs_reference"] = max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))
                row["equal_to_reference"] = all(torch.equal(o, r) for o, r in zip(out, ref))
                row["fraction_equal"] = min(float((o == r).float().mean()) for o, r in zip(out, ref))
                ms = bench(lambda: f(q, k, wq, wk, rope, H), cuda)
                row["ms_q_and_k"] = ms
                row["GB_per_s"] = 4 * L * C * 2 / (ms / 1e3) / 1e9
            except Exception as exc:  # one failing variant must not stop the others
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(name, json.dumps(row), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "qk_prep.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
