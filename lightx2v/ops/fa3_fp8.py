"""8-bit attention through FlashAttention-3's FP8 (e4m3) forward: the `fa3_fp8` backend.

FA3 (the Hopper build of flash-attention, module `flash_attn_interface`) runs both products as FP8
wgmma with the softmax overlapped (its ping-pong schedule): ~940 TOPS at Wan-14B 480P shapes on
an H200 against ~770 for our Triton `sage8` and ~575 for cuDNN's bf16 kernel (docs/benchmarks.md).
FA3 takes one dequantization scale per (batch, head) for each of q, k and v, so the quantization
here is per (batch, head): amax over tokens and channels -> 448 (e4m3's largest finite value).

K is smoothed first, as SageAttention does: its mean over tokens (per batch, head and channel) is
subtracted. That is exact for softmax attention -- q . (k - m) differs from q . k by q . m, the same
for every key of a query row, which the softmax cancels -- and it takes K's channel offset out of
the range the 8-bit grid has to cover. V is smoothed too: out = attn(q, k, v - mean_v) + mean_v
(the probabilities of a row sum to 1). Hopper's FP8 tensor-core dot accumulates in reduced
precision and FA3 accumulates P.V over all key tiles inside it, so a large shared part of V (a
flat attention over 32k tokens outputs ~mean_v) would carry a systematic error; without it the
error of one Wan-14B forward was 1.7e-1 (relative L2, H200), 33x sage8's. Lossy (q, k, v and the probabilities are rounded to e4m3):
opt-in, never picked by "auto"; its error is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_per_head(x: Tensor, smooth: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """x [B, L, H, D] -> (x8 float8_e4m3fn [B, L, H, D], descale fp32 [B, H], mean): x ~= x8 * descale,
    or with `smooth` x - mean ~= x8 * descale, mean fp32 [B, 1, H, D] over the tokens (else None).

    One pass over the tokens gives what the scale needs, then one pass casts: with `smooth` the
    largest |x - mean| of a channel is max(x) - mean or mean - min(x), so the mean, max and min are
    reduced together (Inductor fuses them into one kernel) instead of a second reduction over
    x - mean. Floating-point subtraction is monotonic, so the amax is the same number either way."""
    xf = x.float()
    if smooth:
        mean = xf.mean(dim=1, keepdim=True)  # [B, 1, H, D]
        hi, lo = xf.amax(dim=1, keepdim=True), xf.amin(dim=1, keepdim=True)
        amax = torch.maximum(hi - mean, mean - lo).amax(dim=(1, 3))  # [B, H]
        xf = xf - mean
    else:
        mean = None
        amax = xf.abs().amax(dim=(1, 3))
    amax = amax.clamp_min(1e-12)
    x8 = (xf * (E4M3_MAX / amax)[:, None, :, None]).to(torch.float8_e4m3fn)
    return x8, (amax / E4M3_MAX).contiguous(), mean


def fa3_fp8_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention of q [B, Lq, H, D], k/v [B, Lk, H, D] (bf16/fp16) with FA3's FP8 kernel;
    the output [B, Lq, H, D] in q's dtype."""
    from flash_attn_interface import flash_attn_func

    q8, qd, _ = quantize_per_head(q)
    k8, kd, _ = quantize_per_head(k, smooth=True)  # K's mean: the softmax cancels it
    v8, vd, v_mean = quantize_per_head(v, smooth=True)  # V's mean: added back below
    out = flash_attn_func(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)
    out = out[0] if isinstance(out, tuple) else out  # some FA3 versions also return the LSE
    return (out.float() + v_mean).to(q.dtype)
