"""Triton kernels for the 8-bit linear layers (dispatch: lightx2v.quant.gemm, `impl="triton"`).

- `quantize_rows(x, qdtype)`: the per-token activation quantizer in ONE kernel (one program per
  row: a pass for the row's absmax, a pass that scales, rounds and casts; the second pass reads the
  row back from L2). torch's version is three kernels and two extra fp32 copies of x.
  int8 rounds half to even, as torch.round does (the 1.5 * 2^23 trick: exact in fp32 for |v| < 2^22);
  e4m3 is the hardware cast (round to nearest even on the GPU; Triton's interpreter truncates).
- `scaled_mm(a, b, a_scale, b_scale, bias, out_dtype)`: y = (a @ b^T) * a_scale[M] * b_scale[N] + bias,
  one GEMM with the scales and the bias in its epilogue. a: [M, K] int8 with b: [N, K] int8 (int32
  accumulation: w8a8-int8, against torch._int_mm, which writes an int32 [M, N] that a second kernel
  scales), or a: [M, K] bf16/fp16 with b: [N, K] int8 / float8_e4m3fn and no a_scale (the weight
  converted to a's dtype in registers, fp32 accumulation, no dequantized copy of the weight in
  memory). Both read the weight [N, K] K-major as stored. Measured on the H200 (2026-11-30,
  docs/benchmarks.md) the weight-only flavour runs at 390-510 TFLOP/s at the 14B shapes against
  690-800 for dequantize + cuBLAS, so the w8a16 schemes do not dispatch to it (lightx2v.quant.gemm).

Both are opaque `torch.library.custom_op`s ("lightx2v::quantize_rows", "lightx2v::scaled_mm"), so a
compiled block traces them without a graph break. Under TRITON_INTERPRET (the CPU test suite) a
fixed small config replaces autotuning.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

E4M3_MAX = 448.0


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------- activation quantizer


@triton.jit
def _quant_rows_kernel(X, Q, S, K, stride_x, stride_q, QMAX: tl.constexpr, IS_INT8: tl.constexpr,
                       BLOCK: tl.constexpr, NBLOCKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(NBLOCKS):  # constexpr trip count (the interpreter takes no runtime bound)
        offs = i * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / QMAX
    tl.store(S + row, scale)
    for i in range(NBLOCKS):
        offs = i * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) / scale
        if IS_INT8:
            # 1.5 * 2^23: (v + c) - c rounds an fp32 |v| < 2^22 to the nearest integer, ties to even
            # (a literal: a jitted kernel reads no non-constexpr globals)
            v = (v + 12582912.0) - 12582912.0
            q = tl.minimum(tl.maximum(v, -127.0), 127.0).to(tl.int8)
        else:
            q = tl.minimum(tl.maximum(v, -QMAX), QMAX).to(tl.float8e4nv)
        tl.store(Q + row * stride_q + offs, q, mask=offs < K)


def _quantize_rows_impl(x: Tensor, int8: bool) -> tuple[Tensor, Tensor]:
    # x: [M, K] float, unit stride on K -> (xq [M, K] int8 | float8_e4m3fn, scale [M, 1] fp32)
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=torch.int8 if int8 else torch.float8_e4m3fn)
    s = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    if m:
        block = min(triton.next_power_of_2(k), 2048)
        _quant_rows_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), QMAX=127.0 if int8 else E4M3_MAX,
                                 IS_INT8=int8, BLOCK=block, NBLOCKS=triton.cdiv(k, block),
                                 num_warps=8 if block >= 2048 else 4)
    return q, s


@torch.library.custom_op("lightx2v::quantize_rows", mutates_args=())
def _quantize_rows_op(x: Tensor, int8: bool) -> tuple[Tensor, Tensor]:
    return _quantize_rows_impl(x, int8)


@_quantize_rows_op.register_fake
def _(x: Tensor, int8: bool) -> tuple[Tensor, Tensor]:
    return (x.new_empty(x.shape, dtype=torch.int8 if int8 else torch.float8_e4m3fn),
            x.new_empty((x.shape[0], 1), dtype=torch.float32))


def quantize_rows(x: Tensor, qdtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (xq [M, K] qdtype, scale [M, 1] fp32): symmetric absmax per row, one kernel."""
    if qdtype not in (torch.int8, torch.float8_e4m3fn):
        raise ValueError(f"quantize_rows: qdtype must be int8 or float8_e4m3fn, got {qdtype}")
    if x.ndim != 2:
        raise ValueError(f"quantize_rows: expected x [M, K], got shape {tuple(x.shape)}")
    return _quantize_rows_op(x if x.stride(-1) == 1 else x.contiguous(), qdtype == torch.int8)


# ---------------------------------------------------------------- GEMM with the scales in its epilogue


def _gemm_configs() -> list:
    cfg = []
    for bm, bn, bk, warps, stages in ((128, 256, 128, 8, 3), (128, 128, 128, 8, 4), (128, 256, 64, 8, 4),
                                      (256, 128, 64, 8, 4), (128, 128, 64, 4, 4), (64, 128, 128, 4, 4)):
        cfg.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                 num_warps=warps, num_stages=stages))
    return cfg


@triton.jit
def _scaled_mm_tile(acc, a_ptrs, b_ptrs, rm, rn, M, N, INT_ACC: tl.constexpr):
    # rows past M / columns past N are loaded unmasked-to-garbage-free: masked, and never stored
    a = tl.load(a_ptrs, mask=(rm < M)[:, None])
    b = tl.load(b_ptrs, mask=(rn < N)[None, :])
    if INT_ACC:
        acc += tl.dot(a, b, out_dtype=tl.int32)
    else:  # the 8-bit weight converted to the activations' dtype in registers (exact: int8, e4m3 fit bf16)
        acc += tl.dot(a, b.to(a.dtype))
    return acc


@triton.jit
def _scaled_mm_kernel(A, B, C, AS, BS, BIAS, M, N, K, stride_am, stride_bn, stride_cm,
                      HAS_A_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, INT_ACC: tl.constexpr,
                      INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # grouped tile order: GROUP_M row tiles share their column tiles while those sit in L2
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = A + rm[:, None].to(tl.int64) * stride_am + rk[None, :]  # [BLOCK_M, BLOCK_K]
    b_ptrs = B + rn[None, :].to(tl.int64) * stride_bn + rk[:, None]  # [BLOCK_K, BLOCK_N] view of B [N, K]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32 if INT_ACC else tl.float32)
    # K is a multiple of BLOCK_K (checked on the host): no masks along K
    if INTERPRET:  # triton 3.6's interpreter takes no runtime `range` bound
        k0 = 0
        while k0 < K:
            acc = _scaled_mm_tile(acc, a_ptrs, b_ptrs, rm, rn, M, N, INT_ACC)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
            k0 += BLOCK_K
    else:  # a `for` loop, so the compiler software-pipelines the loads (num_stages)
        for _ in range(0, K, BLOCK_K):
            acc = _scaled_mm_tile(acc, a_ptrs, b_ptrs, rm, rn, M, N, INT_ACC)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    y = acc.to(tl.float32) * tl.load(BS + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_A_SCALE:
        y = y * tl.load(AS + rm, mask=rm < M, other=0.0)[:, None]
    if HAS_BIAS:
        y = y + tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    c_ptrs = C + rm[:, None].to(tl.int64) * stride_cm + rn[None, :]
    tl.store(c_ptrs, y.to(C.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


_scaled_mm_tuned = triton.autotune(_gemm_configs(), key=["M", "N", "K", "HAS_A_SCALE", "INT_ACC"])(_scaled_mm_kernel)
_INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1)
K_ALIGN = 128  # the largest BLOCK_K: K must be a multiple (Wan's 1536 / 5120 / 8960 / 13824 are)


def _scaled_mm_impl(a: Tensor, b: Tensor, a_scale: Optional[Tensor], b_scale: Tensor, bias: Optional[Tensor],
                    out_dtype: torch.dtype) -> Tensor:
    # a: [M, K]; b: [N, K]; a_scale: [M, 1] fp32 or None; b_scale: [N] fp32; bias: [N] or None -> [M, N]
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), device=a.device, dtype=out_dtype)
    if m == 0:
        return c
    args = (a, b, c, a_scale if a_scale is not None else b_scale, b_scale, bias if bias is not None else b_scale,
            m, n, k, a.stride(0), b.stride(0), c.stride(0))
    flags = dict(HAS_A_SCALE=a_scale is not None, HAS_BIAS=bias is not None, INT_ACC=a.dtype == torch.int8,
                 INTERPRET=_interpreting())

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if _interpreting():  # autotuning in the interpreter would take minutes
        _scaled_mm_kernel[grid](*args, **flags, **_INTERPRET_CONFIG)
    else:
        _scaled_mm_tuned[grid](*args, **flags)
    return c


@torch.library.custom_op("lightx2v::scaled_mm", mutates_args=())
def _scaled_mm_op(a: Tensor, b: Tensor, a_scale: Optional[Tensor], b_scale: Tensor, bias: Optional[Tensor],
                  out_dtype: torch.dtype) -> Tensor:
    return _scaled_mm_impl(a, b, a_scale, b_scale, bias, out_dtype)


@_scaled_mm_op.register_fake
def _(a, b, a_scale, b_scale, bias, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def scaled_mm(a: Tensor, b: Tensor, a_scale: Optional[Tensor], b_scale: Tensor, bias: Optional[Tensor],
              out_dtype: torch.dtype) -> Tensor:
    """(a @ b^T) * a_scale * b_scale + bias -> [M, N] out_dtype, in one kernel.

    a: [M, K] int8 (with a_scale [M, 1] fp32) or bf16/fp16 (a_scale None: weight-only); b: [N, K] int8
    or float8_e4m3fn (int8 a needs int8 b); b_scale: [N, 1] or [N] fp32; bias: [N] or None.
    K must be a multiple of 128 (K_ALIGN)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"scaled_mm: expected a [M, K] and b [N, K], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] % K_ALIGN:
        raise ValueError(f"scaled_mm: K must be a multiple of {K_ALIGN}, got {a.shape[1]}")
    if a.dtype == torch.int8 and (b.dtype != torch.int8 or a_scale is None):
        raise ValueError("scaled_mm: int8 activations need int8 weights and a_scale")
    if a.dtype not in (torch.int8, torch.bfloat16, torch.float16):
        raise ValueError(f"scaled_mm: activations must be int8, bf16 or fp16, got {a.dtype}")
    a = a if a.stride(1) == 1 else a.contiguous()
    b = b if b.stride(1) == 1 else b.contiguous()
    return _scaled_mm_op(a, b, a_scale, b_scale.reshape(-1).float(), bias, out_dtype)
