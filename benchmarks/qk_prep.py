"""Wan's q/k preparation before the self-attention -- RMSNorm across the 5,120 channels (with weight),
3D RoPE on each head's channel pairs, one cast to bf16 -- at 14B 480P shapes, four ways:

  inductor_stack  the torch reference (lightx2v.ops.fused "torch": apply_rope's compiled form, pairs
                  rotated and re-interleaved with torch.stack) under torch.compile, q and k in one graph
  inductor_flip   the same math written as x * cos2 + swap(x) * sin2 (cos2 = cos repeated per pair,
                  sin2 = (-sin, sin) per pair, swap = the pair's other channel): plain pointwise index
                  math for Inductor, bit-identical to the stack form (checked on the CPU)
  triton_v1       our Triton kernel (lightx2v.ops.triton.norms.qk_norm_rope: strided even/odd loads)
  triton_v2       a variant kept here until measured: the row loaded as contiguous [pairs, 2] tiles,
                  split / joined in registers (tl.split / tl.join), one contiguous store

The profile of a compiled 14B forward (docs/benchmarks.md, session 7) put this step at ~1.2 ms per
block for q and k together, ~1.1 TB/s; an ideal pass moves 4 x 32760 x 5120 x 2 bytes (1.34 GB: ~0.3 ms).
Prints and writes DIR/qk_prep.json: ms per block (q and k), GB/s, max error against inductor_stack.

    python benchmarks/qk_prep.py --out $OUT                       # device, ~30 s
    TRITON_INTERPRET=1 python benchmarks/qk_prep.py --tiny --out /tmp/qk   # CPU: checks the variants agree
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lightx2v.ops.triton.norms import _cast


def stack_form(q, k, wq, wk, rope, heads):
    from lightx2v.ops.fused import get_fused

    ref = get_fused("torch").qk_norm_rope
    return ref(q, wq, 1e-6, rope, heads, torch.bfloat16), ref(k, wk, 1e-6, rope, heads, torch.bfloat16)


def _flip_one(x, w, rope, heads):
    normed = F.rms_norm(x.float(), (x.shape[-1],), w.float(), 1e-6).unflatten(-1, (heads, -1))  # [B, L, H, D]
    cos2 = rope[..., 0:1].expand(*rope.shape[:-1], 2).flatten(-2)  # [L, 1, D]: c0 c0 c1 c1 ...
    sin2 = torch.stack((-rope[..., 1], rope[..., 1]), dim=-1).flatten(-2)  # [L, 1, D]: -s0 s0 -s1 s1 ...
    swapped = normed.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # each channel's pair partner
    return (normed * cos2 + swapped * sin2).to(torch.bfloat16)


def flip_form(q, k, wq, wk, rope, heads):
    return _flip_one(q, wq, rope, heads), _flip_one(k, wk, rope, heads)


def triton_v1(q, k, wq, wk, rope, heads):
    from lightx2v.ops.fused import get_fused

    tri = get_fused("triton").qk_norm_rope
    return tri(q, wq, 1e-6, rope, heads, torch.bfloat16), tri(k, wk, 1e-6, rope, heads, torch.bfloat16)


@triton.jit
def _v2_kernel(x_ptr, w_ptr, rope_ptr, out_ptr, C, HALF_D, sxl, srl, eps, BLOCK_P: tl.constexpr):
    row = tl.program_id(0)  # one token (B = 1)
    p = tl.arange(0, BLOCK_P)[:, None]
    two = tl.arange(0, 2)[None, :]
    offs = 2 * p + two  # [BLOCK_P, 2]: contiguous channels
    mask = offs < C
    x = tl.load(x_ptr + row * sxl + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / C + eps)
    x = x * rstd * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    cs = tl.load(rope_ptr + row * srl + 2 * (p % HALF_D) + two, mask=mask, other=0.0)  # [BLOCK_P, 2] (cos, sin)
    re, im = tl.split(x)
    cos, sin = tl.split(cs)
    y = tl.join(re * cos - im * sin, re * sin + im * cos)
    tl.store(out_ptr + row * C + offs, _cast(y, out_ptr.dtype.element_ty), mask=mask)  # RNE, as the GPU


def _v2_one(x, w, rope, heads):
    _, L, C = x.shape
    r = rope.reshape(rope.shape[0], -1).float().contiguous()  # [L, D] (cos, sin) interleaved
    out = torch.empty((1, L, C), dtype=torch.bfloat16, device=x.device)
    block_p = triton.next_power_of_2(C // 2)
    _v2_kernel[(L,)](x, w, r, out, C, C // heads // 2, x.stride(1), r.stride(0), 1e-6, BLOCK_P=block_p,
                     num_warps=8 if block_p >= 2048 else 4)
    return out.unflatten(-1, (heads, -1))


def triton_v2(q, k, wq, wk, rope, heads):
    return _v2_one(q, wq, rope, heads), _v2_one(k, wk, rope, heads)


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
    variants = {"inductor_stack": stack_form, "inductor_flip": flip_form, "triton_v1": triton_v1, "triton_v2": triton_v2}
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "L": L, "C": C, "H": H, "rows": {}}
    with torch.no_grad():
        ref = stack_form(q, k, wq, wk, rope, H)
        for name, fn in variants.items():
            row = res["rows"][name] = {}
            try:
                f = torch.compile(fn, dynamic=False) if name.startswith("inductor") and cuda else fn
                out = f(q, k, wq, wk, rope, H)
                row["max_abs_err_vs_stack"] = max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))
                row["equal_to_stack"] = all(torch.equal(o, r) for o, r in zip(out, ref))
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
