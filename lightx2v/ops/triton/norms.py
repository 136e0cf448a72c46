"""Triton kernels for the elementwise work of a DiT block (dispatch: lightx2v.ops.fused).

Three memory-bound kernels, one program per token row (the whole row of C channels in one block:
C = 1536 / 3072 / 5120 for Wan 1.3B / 5B / 14B), fp32 arithmetic, one rounding at the store:

- `norm_modulate`:  LayerNorm (no affine) of the fp32 residual, then `* (1 + scale) + shift`,
                    stored in the next Linear's dtype (bf16 / fp16 / fp32)
- `qk_norm_rope`:   RMSNorm (with weight) of a q or k projection across the whole width (Wan), or
                    of each head on its own (`per_head`: HunyuanVideo-1.5; the row as a [heads, D/2] tile),
                    then the 3D RoPE rotation of each head's channel pairs with that token's
                    (cos, sin), or none (`rope` None: a text stream)
- `gated_residual`: `x + y * gate` in fp32 (a new tensor; the inputs are not written)

Modulation tensors (shift, scale, gate) are [B, 1 | L, C]: they are expanded to [B, L, C] (a view,
stride 0 over the broadcast dims) and read through their strides, so one kernel serves the
per-sample and the per-token (Wan2.2 TI2V) forms. Inputs need a unit stride on the channel dim;
their other strides are passed (q/k are strided slices of a fused QKV output).

Each wrapper is an opaque `torch.library.custom_op` ("lightx2v::<name>"), so torch.compile traces
it without a graph break. Without a GPU the kernels run in
Triton's interpreter (TRITON_INTERPRET=1, set by the test suite) on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


def _launch(kernel, grid: tuple, *args, **kw) -> None:
    kernel[grid](*args, **kw)


def _op(name: str, fake):
    """Register `fn` as the opaque custom op lightx2v::`name`, with a fake (shape-only) implementation.

    torch.compile traces the op without a graph break and Inductor calls the kernel as it is. (As a
    `triton_op`, which lets Inductor see the kernel's source, Inductor failed to compile these kernels
    on the H200 with PyTorch 2.11 / Triton 3.6, 2026-11-30; and where a block is compiled, Inductor
    fuses the torch reference of these ops at least as well: docs/benchmarks.md.)"""

    def register(fn):
        op = torch.library.custom_op(f"lightx2v::{name}", mutates_args=())(fn)
        op.register_fake(fake)
        return op

    return register


def _warps(block: int) -> int:
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


def _rows(t: Tensor, shape: torch.Size) -> tuple[Tensor, int, int]:
    """`t` [B?, 1 | L, C] expanded to `shape` [B, L, C] with a unit channel stride: (t, stride_b, stride_l)."""
    t = t.expand(shape)
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1)


@triton.jit
def _cast(y, ty: tl.constexpr):
    """fp32 `y` in dtype `ty`, rounded to nearest even. For bf16 the rounding is written out: Triton's
    interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest even; both then agree).
    NaN and inf keep their class (the carry cannot leave the exponent of an all-ones exponent)."""
    if ty == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    return y.to(ty)


# ---------------------------------------------------------------- LayerNorm + modulation


@triton.jit
def _row(L):
    """(row, batch, token) of this program, int64: a strided [2, 75600, 3 * 5120] q/k passes 2**31."""
    row = tl.program_id(0).to(tl.int64)
    return row, row // L, row % L


@triton.jit
def _norm_modulate_kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, L, C, sxb, sxl, ssb, ssl, scb, scl, eps,
                          BLOCK: tl.constexpr):
    row, b, l_ = _row(L)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(x_ptr + b * sxb + l_ * sxl + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    d = tl.where(mask, x - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + b * ssb + l_ * ssl + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b * scb + l_ * scl + cols, mask=mask, other=0.0).to(tl.float32)
    y = (d * rstd) * (1.0 + scale) + shift
    tl.store(out_ptr + row * C + cols, _cast(y, out_ptr.dtype.element_ty), mask=mask)


@_op("norm_modulate", lambda x, shift, scale, eps, out_dtype: x.new_empty(x.shape, dtype=out_dtype))
def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    """LayerNorm(x) * (1 + scale) + shift: x [B, L, C] fp32, shift/scale [B, 1 | L, C] -> [B, L, C] out_dtype."""
    B, L, C = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    shift, ssb, ssl = _rows(shift, x.shape)
    scale, scb, scl = _rows(scale, x.shape)
    out = torch.empty((B, L, C), dtype=out_dtype, device=x.device)
    block = triton.next_power_of_2(C)
    _launch(_norm_modulate_kernel, (B * L,),
        x, shift, scale, out, L, C, x.stride(0), x.stride(1), ssb, ssl, scb, scl, eps,
        BLOCK=block, num_warps=_warps(block))
    return out


# ---------------------------------------------------------------- RMSNorm (across heads or per head) + RoPE


@triton.jit
def _qk_norm_rope_kernel(x_ptr, w_ptr, rope_ptr, out_ptr, L, C, G, HALF_D, sxb, sxl, srl, eps,
                         BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, ROPE: tl.constexpr):
    # one token row of C = H * D channels as a [groups, pairs, 2] tile: the row is normalised in
    # G-channel groups, the whole row (G = C, one group: Wan) or each head (G = D, H groups: per_head).
    # The tile's addresses are the row's channels in order, so loads and the store are contiguous;
    # the pairs (2p, 2p+1) are split and joined in registers (strided even/odd loads and stores ran
    # at 0.75x the speed: benchmarks/qk_prep.py). A group starts at a head boundary, so its pair p is
    # pair (g*G/2 + p) % (D/2) of its head, and the weight (G long) is read from its start per group.
    row, b, l_ = _row(L)
    g = tl.arange(0, BLOCK_G)[:, None, None]
    p = tl.arange(0, BLOCK_P)[None, :, None]
    two = tl.arange(0, 2)[None, None, :]
    mask = (g < C // G) & (p < G // 2) & (two < 2)
    offs = g * G + 2 * p + two  # [BLOCK_G, BLOCK_P, 2]: the channel
    x = tl.load(x_ptr + b * sxb + l_ * sxl + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / G + eps)  # [BLOCK_G], one per group
    x = x * rstd[:, None, None] * tl.load(w_ptr + 2 * p + two, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        j = (g * (G // 2) + p) % HALF_D  # the pair's index in its head
        cs = tl.load(rope_ptr + l_ * srl + 2 * j + two, mask=mask, other=0.0)  # (cos, sin)
        re, im = tl.split(x)
        cos, sin = tl.split(cs)
        x = tl.join(re * cos - im * sin, re * sin + im * cos)
    tl.store(out_ptr + row * C + offs, _cast(x, out_ptr.dtype.element_ty), mask=mask)


@_op("qk_norm_rope",
     lambda x, weight, eps, rope, num_heads, out_dtype, per_head=False: x.new_empty(x.shape, dtype=out_dtype))
def qk_norm_rope(x: Tensor, weight: Tensor, eps: float, rope: Tensor | None, num_heads: int, out_dtype: torch.dtype,
                 per_head: bool = False) -> Tensor:
    """RoPE(RMSNorm(x) * weight): x [B, L, C], weight [C] (across the heads) or with per_head [D] (each head),
    rope [L, 1, D/2, 2] fp32 or None (no rotation) -> [B, L, C] out_dtype."""
    B, L, C = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    group = C // num_heads if per_head else C
    if rope is not None:
        rope = rope.reshape(rope.shape[0], -1)  # [L, D] (cos, sin) interleaved
        if rope.dtype != torch.float32 or rope.stride(-1) != 1:
            rope = rope.float().contiguous()
    weight = weight.contiguous()
    out = torch.empty((B, L, C), dtype=out_dtype, device=x.device)
    block_g, block_p = triton.next_power_of_2(C // group), triton.next_power_of_2(group // 2)
    _launch(_qk_norm_rope_kernel, (B * L,),
        x, weight, x if rope is None else rope, out, L, C, group, C // num_heads // 2, x.stride(0), x.stride(1),
        0 if rope is None else rope.stride(0), eps, BLOCK_G=block_g, BLOCK_P=block_p, ROPE=rope is not None,
        num_warps=_warps(block_g * block_p))  # pairs: 4096 (Wan-14B's 2,560 padded) -> 8 warps
    return out


# ---------------------------------------------------------------- gated residual


@triton.jit
def _gated_residual_kernel(x_ptr, y_ptr, gate_ptr, out_ptr, L, C, sxb, sxl, syb, syl, sgb, sgl,
                           BLOCK: tl.constexpr):
    row, b, l_ = _row(L)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(x_ptr + b * sxb + l_ * sxl + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * syb + l_ * syl + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + b * sgb + l_ * sgl + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + cols, x + y * g, mask=mask)


@_op("gated_residual", lambda x, y, gate: x.new_empty(x.shape, dtype=torch.float32))
def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x + y * gate in fp32: x [B, L, C] fp32, y [B, L, C] (bf16), gate [B, 1 | L, C] -> a new [B, L, C] fp32."""
    B, L, C = x.shape
    x, sxb, sxl = _rows(x, x.shape)
    y, syb, syl = _rows(y, x.shape)
    gate, sgb, sgl = _rows(gate, x.shape)
    out = torch.empty((B, L, C), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(C)
    _launch(_gated_residual_kernel, (B * L,),
        x, y, gate, out, L, C, sxb, sxl, syb, syl, sgb, sgl, BLOCK=block, num_warps=_warps(block))
    return out

