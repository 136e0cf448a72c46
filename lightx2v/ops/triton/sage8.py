"""sage8: 8-bit attention in Triton, SageAttention-style (opt-in, lossy).

    out = softmax(Q K^T / sqrt(D)) V        q: [B, Lq, H, D], k/v: [B, Lk, H, D], fp16/bf16, no mask

Design (two passes):
1. Prepare (memory-bound, ~1% of the time at Wan shapes). K is smoothed: its mean over tokens per
   (b, h, channel) is subtracted (softmax is invariant to adding q.mean_k to every score of a row),
   which removes the large shared offset of K's channels so 8 bits cover what varies. Q is quantized
   per block of QBLK=128 rows (a multiple of the attention kernel's BLOCK_M: one scale per program) and K per
   block of KBLK=128 rows (a multiple of every BLOCK_N: one scalar scale per key tile), each head
   apart, scale = amax/448 (FP8 e4m3) or amax/127 (INT8); Q's scale also carries 1/sqrt(D) * log2(e),
   so the kernel works in base 2 (exp2). V is stored transposed, [B, H, D, Lk_pad], FP8 with a
   per-channel scale (amax over tokens per (b, h, d)) or FP16: an FP8 tensor-core dot on Hopper
   (wgmma) wants its second operand K-major, i.e. tokens contiguous. Quantized Q/K/V are padded with
   zeros to whole tiles, so the main loop loads without masks.
2. Attention (compute-bound): grid (Lq_pad/128, B*H), FlashAttention-2 online softmax with fp32
   running max/sum. S = dot8(Q, K^T) stays unscaled: the row max is taken on it and multiplied by the
   tile's scalar c = q_scale * k_scale (c > 0), and P = exp2(S * c - (m - 8)) is one FMA + one exp2
   per score, as in an unquantized kernel. P lies in [0, 256] (the +8 moves e4m3's range onto P for
   free; the row sum carries the same factor, so out = acc / l undoes it). P goes to FP8 (or FP16)
   and meets V in a second 8-bit (16-bit) tensor-core dot whose result is added to the fp32
   accumulator outside the dot (Hopper's FP8 wgmma accumulates in reduced precision; only BLOCK_N
   products are summed there). Only the last, partial key tile is masked (-inf scores); the full
   tiles run a mask-free, software-pipelined loop. V's scale and 1/l are applied once, at the end.
   Formats: qk "fp8" (sm89+) or "int8" (sm80+), pv "fp8" (sm89+) or "fp16"; the default is
   fp8/fp8 on sm89+ and int8/fp16 on sm80/86 (SageAttention 1 there, SageAttention 2 on Ada/Hopper).
   BLOCK_N / num_warps / num_stages are autotuned per (Lk, D); under TRITON_INTERPRET a fixed config.

Error budget (relative L2 of the output against fp32). e4m3 keeps 3 mantissa bits (half-ulp 2^-4
relative), int8 per block 1/254 of the block's amax. On random q, k ~ N(0, 1) (the hardest case:
the output is a small average), a torch emulation with round-to-nearest casts gives ~5% for
fp8/fp8 (fp8 Q.K^T alone ~3.5%, fp8 P.V alone ~3%), ~3% for int8/fp8 and ~1.2% for int8/fp16
(cosine 0.999 / 0.9995 / 0.99993). That is why SageAttention 2 keeps Q.K^T in INT8; fp8 Q.K^T is the
fastest path (no int->float conversion per score), and benchmarks/attention_kernels.py measures
both at the Wan shapes. Smoothing K matters: without it a channel offset of K uses up the 8 bits.
This is lossy: never picked by "auto" (lightx2v/ops/attention.py).

`sage8_attention` is a torch.library.triton_op ("lightx2v::sage8_attention") when this torch has
the API (>= 2.6), so torch.compile sees the Triton kernels without a graph break; otherwise plain
launches. D must be 64 or 128.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightx2v.errors import LightX2VError

QBLK = 128  # rows of Q per scale (a multiple of the attention kernel's BLOCK_M: 64 or 128)
KBLK = 128  # rows of K per scale: a multiple of BLOCK_N (64 or 128), so one scalar scale per tile
LK_ALIGN = 128  # K/V padded to a multiple of the largest BLOCK_N
HEAD_DIMS = (64, 128)
P_LOG2 = 8.0  # P = exp2(S - m + 8) in [0, 256]: inside e4m3's range (max 448), exact powers of two
FP8_MAX, INT8_MAX = 448.0, 127.0
LOG2E = 1.4426950408889634
QK_FORMATS, PV_FORMATS = ("fp8", "int8"), ("fp8", "fp16")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------- prepare: smooth + quantize


@triton.jit
def _load_rows(X, stride_b, stride_l, stride_h, stride_d, H, L, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's BLOCK rows of one (batch, head) of X: [B, L, H, D], any strides -> fp32, zero past L."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, HEAD_DIM)
    base = X + (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    x = tl.load(base + rows[:, None].to(tl.int64) * stride_l + d[None, :] * stride_d, mask=(rows < L)[:, None], other=0.0)
    return pid, bh, rows, d, x.to(tl.float32)


@triton.jit
def _quant_rows_kernel(
    X, MEAN, OUT, SCALE,  # X: [B, L, H, D] any strides; MEAN: [B, H, D] fp32; OUT: [B, H, L_PAD, D]; SCALE: [B, H, L_PAD // BLOCK]
    stride_xb, stride_xl, stride_xh, stride_xd,
    H, L, L_PAD, extra_scale,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, SMOOTH: tl.constexpr, QMAX: tl.constexpr, TO_INT8: tl.constexpr,
):
    """One (block of BLOCK rows, head): subtract K's mean, scale by amax/QMAX, cast to fp8/int8."""
    pid, bh, rows, d, x = _load_rows(X, stride_xb, stride_xl, stride_xh, stride_xd, H, L, BLOCK, HEAD_DIM)  # [BLOCK, D]
    valid = rows < L
    if SMOOTH:
        mean = tl.load(MEAN + bh * HEAD_DIM + d)
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
    xs = tl.minimum(tl.maximum(x * (QMAX / amax), -QMAX), QMAX)
    if TO_INT8:
        xq = tl.where(xs >= 0, xs + 0.5, xs - 0.5).to(tl.int8)  # round half away from zero
    else:
        xq = xs.to(OUT.dtype.element_ty)
    out = OUT + bh.to(tl.int64) * L_PAD * HEAD_DIM
    tl.store(out + rows[:, None] * HEAD_DIM + d[None, :], xq)
    tl.store(SCALE + bh * (L_PAD // BLOCK) + pid, amax / QMAX * extra_scale)


@triton.jit
def _prep_v_kernel(
    V, VSCALE, OUT,  # V: [B, L, H, D] any strides; VSCALE: [B, H, D] fp32 (amax / 448); OUT: [B, H, D, L_PAD]
    stride_vb, stride_vl, stride_vh, stride_vd,
    H, L, L_PAD,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, TO_FP8: tl.constexpr,
):
    """One (block of BLOCK tokens, head): V to fp8 (per-channel scale) or fp16, written transposed."""
    pid, bh, rows, d, x = _load_rows(V, stride_vb, stride_vl, stride_vh, stride_vd, H, L, BLOCK, HEAD_DIM)  # [BLOCK, D]
    if TO_FP8:
        inv = 1.0 / tl.load(VSCALE + bh * HEAD_DIM + d)
        x = tl.minimum(tl.maximum(x * inv[None, :], -448.0), 448.0)
    out = OUT + bh.to(tl.int64) * HEAD_DIM * L_PAD
    tl.store(out + d[None, :] * L_PAD + rows[:, None], x.to(OUT.dtype.element_ty))


# ---------------------------------------------------------------- attention


@triton.jit
def _attn_tile(
    acc, l_i, m_i, q, q_scale, K_bh, V_bh, KS_bh, start_n, Lk, LK_PAD,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, KBLK: tl.constexpr, QK_INT8: tl.constexpr,
    P_LOG2: tl.constexpr, MASK: tl.constexpr,
):
    """One key tile: S = Q K^T (8-bit), online softmax update, acc += P V; returns (acc, l_i, m_i).

    MASK only for the last, partial tile: the full tiles do no masking work at all.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = tl.load(K_bh + offs_n[:, None] * HEAD_DIM + offs_d[None, :])  # [BLOCK_N, D], D contiguous
    if QK_INT8:
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
    else:
        s = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] fp32, unscaled
    c = tl.load(KS_bh + start_n // KBLK) * q_scale  # scalar: a tile lies inside one K scale block
    if MASK:
        s = tl.where((offs_n < Lk)[None, :], s, float("-inf"))  # padded keys never count
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * c)  # c > 0: max(s * c) = max(s) * c, no per-score op
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * c - (m_new - P_LOG2)[:, None])  # one FMA per score; p in [0, 2^P_LOG2]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(V_bh + offs_d[None, :] * LK_PAD + offs_n[:, None])  # [BLOCK_N, D], tokens contiguous (K-major)
    # fp32 accumulation outside the dot: an fp8 wgmma only sums BLOCK_N products in its own
    # reduced-precision accumulator (Triton keeps this add separate for fp8 on sm90).
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _attn_kernel(
    Q, K, V, QS, KS, VS, Out,  # Q: [B, H, LQ_PAD, D] 8-bit; K: [B, H, LK_PAD, D] 8-bit; V: [B, H, D, LK_PAD]
    stride_ob, stride_ol, stride_oh, stride_od,  # Out: [B, Lq, H, D] in q's dtype
    H, Lq, Lk, LQ_PAD, LK_PAD,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KBLK: tl.constexpr,
    QK_INT8: tl.constexpr, PV_FP8: tl.constexpr, P_LOG2: tl.constexpr, INTERPRET: tl.constexpr,
    QBLK: tl.constexpr,
):
    tl.static_assert(KBLK % BLOCK_N == 0)  # one K scale per tile
    tl.static_assert(QBLK % BLOCK_M == 0)  # a program's rows lie inside one Q scale block
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    q = tl.load(Q + bh64 * LQ_PAD * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :])  # [BLOCK_M, D]
    q_scale = tl.load(QS + bh * (LQ_PAD // QBLK) + (pid_m * BLOCK_M) // QBLK)  # includes 1/sqrt(D) * log2(e)
    K_bh = K + bh64 * LK_PAD * HEAD_DIM
    V_bh = V + bh64 * HEAD_DIM * LK_PAD
    KS_bh = KS + bh * (LK_PAD // KBLK)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of S (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of P (carries the 2^P_LOG2 factor)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lk_full = (Lk // BLOCK_N) * BLOCK_N
    if INTERPRET:  # triton 3.6's interpreter cannot take a runtime `range` bound (numpy 2.4); same tiles
        start_n = 0
        while start_n < lk_full:
            acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, q_scale, K_bh, V_bh, KS_bh, start_n, Lk, LK_PAD,
                                       HEAD_DIM, BLOCK_N, KBLK, QK_INT8, P_LOG2, False)
            start_n += BLOCK_N
    else:  # a `for` loop, so the compiler software-pipelines the K/V loads (num_stages)
        for start_n in range(0, lk_full, BLOCK_N):
            acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, q_scale, K_bh, V_bh, KS_bh, start_n, Lk, LK_PAD,
                                       HEAD_DIM, BLOCK_N, KBLK, QK_INT8, P_LOG2, False)
    if lk_full < Lk:  # the partial last tile (K/V are zero-padded there, the scores masked)
        acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, q_scale, K_bh, V_bh, KS_bh, lk_full, Lk, LK_PAD,
                                   HEAD_DIM, BLOCK_N, KBLK, QK_INT8, P_LOG2, True)

    if PV_FP8:
        acc = acc * tl.load(VS + bh * HEAD_DIM + offs_d)[None, :]
    out = acc / l_i[:, None]
    b = bh // H
    h = bh % H
    o_ptrs = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    o_ptrs += offs_m[:, None].to(tl.int64) * stride_ol + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m < Lq)[:, None])


_CONFIGS = [
    # BLOCK_M 128 over 8 warps (two wgmma warpgroups of 64 rows; one program per SM: ~255 registers)
    # or BLOCK_M 64 over 4 warps (one warpgroup; several programs per SM, whose softmax and dots the
    # scheduler can interleave). Q keeps one scale per QBLK=128 rows either way. 4 warps at BLOCK_M
    # 128 spill on sm90 (ptxas), so none; all fit sm90's 227 KB of shared memory (fp8: 32 KB per K+V
    # stage at BLOCK_N 128; fp16 V: 48 KB).
    *(triton.Config({"BLOCK_M": 128, "BLOCK_N": bn}, num_warps=8, num_stages=s)
      for bn, s in ((128, 2), (128, 3), (64, 3), (64, 4))),
    *(triton.Config({"BLOCK_M": 64, "BLOCK_N": bn}, num_warps=4, num_stages=s)
      for bn, s in ((128, 2), (128, 3), (64, 4))),
]
_attn_kernel_tuned = triton.autotune(_CONFIGS, key=["Lk", "HEAD_DIM", "QK_INT8", "PV_FP8"])(_attn_kernel)
_INTERPRET_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)  # BLOCK_M < QBLK: that indexing too


def _wrap(kernel):
    """torch.library.wrap_triton(kernel) when torch has it (traceable by torch.compile), else the kernel."""
    wrap = getattr(torch.library, "wrap_triton", None)
    if wrap is None or _interpreting():
        return kernel
    return wrap(kernel)


# ---------------------------------------------------------------- python side


def _sm(device: torch.device) -> int:
    """Compute capability as an int (90 for sm90). get_device_properties, which torch.compile
    constant-folds, so a compiled DiT block calls sage8 without a graph break."""
    props = torch.cuda.get_device_properties(device)
    return props.major * 10 + props.minor


def default_formats(device: torch.device | str) -> tuple[str, str]:
    """(qk_format, pv_format) for `device`: fp8/fp8 on sm89+ (and in the interpreter), int8/fp16 below."""
    device = torch.device(device)
    if device.type == "cuda" and _sm(device) < 89:
        return "int8", "fp16"
    return "fp8", "fp8"


def _check(q: Tensor, k: Tensor, v: Tensor, qk_format: str, pv_format: str) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise LightX2VError(f"sage8 wants q, k, v as [B, L, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise LightX2VError(f"sage8: q {tuple(q.shape)} and k/v {tuple(k.shape)}/{tuple(v.shape)} must agree on B, H, D")
    if q.shape[-1] not in HEAD_DIMS:
        raise LightX2VError(f"sage8 supports head dim {HEAD_DIMS}, got D={q.shape[-1]}; use another attention backend")
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise LightX2VError(f"sage8 wants float16 or bfloat16 q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise LightX2VError("sage8: empty sequence")
    if qk_format not in QK_FORMATS or pv_format not in PV_FORMATS:
        raise LightX2VError(f"sage8: qk_format in {QK_FORMATS}, pv_format in {PV_FORMATS}; got {qk_format!r}, {pv_format!r}")
    if q.device.type == "cuda" and "fp8" in (qk_format, pv_format) and _sm(q.device) < 89:
        raise LightX2VError(f"sage8 fp8 needs sm89+ (Ada/Hopper), this GPU is sm{_sm(q.device)}; use int8/fp16")


def prepare(q: Tensor, k: Tensor, v: Tensor, qk_format: str, pv_format: str) -> tuple[Tensor, ...]:
    """Smooth + quantize: (q8, k8, vt, q_scale, k_scale, v_scale), layouts in the module docstring."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    lq_pad, lk_pad = triton.cdiv(Lq, QBLK) * QBLK, triton.cdiv(Lk, LK_ALIGN) * LK_ALIGN
    dev = q.device
    qk_dtype = torch.int8 if qk_format == "int8" else torch.float8_e4m3fn
    qmax = INT8_MAX if qk_format == "int8" else FP8_MAX
    q8 = torch.empty(B, H, lq_pad, D, device=dev, dtype=qk_dtype)
    k8 = torch.empty(B, H, lk_pad, D, device=dev, dtype=qk_dtype)
    qs = torch.empty(B, H, lq_pad // QBLK, device=dev, dtype=torch.float32)
    ks = torch.empty(B, H, lk_pad // KBLK, device=dev, dtype=torch.float32)
    k_mean = k.mean(dim=1, dtype=torch.float32).contiguous()  # [B, H, D]
    quant = _wrap(_quant_rows_kernel)
    to_int8 = qk_format == "int8"
    quant[(lq_pad // QBLK, B * H)](q, k_mean, q8, qs, *q.stride(), H, Lq, lq_pad, LOG2E / math.sqrt(D),
                                    HEAD_DIM=D, BLOCK=QBLK, SMOOTH=False, QMAX=qmax, TO_INT8=to_int8)
    quant[(lk_pad // KBLK, B * H)](k, k_mean, k8, ks, *k.stride(), H, Lk, lk_pad, 1.0,
                                    HEAD_DIM=D, BLOCK=KBLK, SMOOTH=True, QMAX=qmax, TO_INT8=to_int8)
    pv_fp8 = pv_format == "fp8"
    if pv_fp8:
        vmin, vmax = torch.aminmax(v, dim=1)  # [B, H, D], no |v| temporary
        vs = (torch.maximum(vmax.float(), -vmin.float()).clamp_min(1e-12) / FP8_MAX).contiguous()
    else:
        vs = torch.ones(B, H, D, device=dev, dtype=torch.float32)
    vt = torch.empty(B, H, D, lk_pad, device=dev, dtype=torch.float8_e4m3fn if pv_fp8 else torch.float16)
    _wrap(_prep_v_kernel)[(lk_pad // 64, B * H)](v, vs, vt, *v.stride(), H, Lk, lk_pad,
                                                 HEAD_DIM=D, BLOCK=64, TO_FP8=pv_fp8)
    return q8, k8, vt, qs, ks, vs


def attend(q8: Tensor, k8: Tensor, vt: Tensor, qs: Tensor, ks: Tensor, vs: Tensor, out: Tensor, Lk: int) -> Tensor:
    """The attention kernel on prepared tensors; writes `out` ([B, Lq, H, D]) and returns it."""
    B, H, lq_pad, D = q8.shape
    lk_pad = k8.shape[2]
    def grid(meta):
        return (lq_pad // meta["BLOCK_M"], B * H)

    args = (q8, k8, vt, qs, ks, vs, out, *out.stride(), H, out.shape[1], Lk, lq_pad, lk_pad)
    consts = dict(HEAD_DIM=D, KBLK=KBLK, QK_INT8=q8.dtype == torch.int8, QBLK=QBLK,
                  PV_FP8=vt.dtype == torch.float8_e4m3fn, P_LOG2=P_LOG2, INTERPRET=_interpreting())
    if _interpreting():  # autotuning in the interpreter would take minutes
        _attn_kernel[grid](*args, **consts, **_INTERPRET_CONFIG)
    else:
        _wrap(_attn_kernel_tuned)[grid](*args, **consts)
    return out


def _sage8_impl(q: Tensor, k: Tensor, v: Tensor, qk_format: str, pv_format: str) -> Tensor:
    # q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D] in q's dtype
    prepared = prepare(q, k, v, qk_format, pv_format)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return attend(*prepared, out, k.shape[1])


_triton_op = getattr(torch.library, "triton_op", None)
if _triton_op is not None:
    _op = _triton_op("lightx2v::sage8_attention", mutates_args=())(_sage8_impl)
else:  # torch < 2.6: plain launches (torch.compile graph-breaks around them)
    _op = _sage8_impl


def sage8_attention(q: Tensor, k: Tensor, v: Tensor, qk_format: str | None = None, pv_format: str | None = None) -> Tensor:
    """8-bit attention: softmax(q k^T / sqrt(D)) v with q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D].

    qk_format: "fp8" (sm89+) or "int8"; pv_format: "fp8" (sm89+) or "fp16"; None: `default_formats`.
    """
    dq, dpv = default_formats(q.device)
    qk_format, pv_format = qk_format or dq, pv_format or dpv
    _check(q, k, v, qk_format, pv_format)
    return _op(q, k, v, qk_format, pv_format)
