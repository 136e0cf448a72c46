"""The w8a8 compute: activations quantized per token at run time, an 8-bit GEMM, both scales after.

    y = (xq @ wq^T) * x_scale[M, 1] * w_scale[1, N] + bias,   xq = round(x / x_scale), x_scale = amax(|x_row|) / qmax

- int8: `torch._int_mm` (int32 accumulation; CPU and CUDA), the scales applied in fp32 after.
- fp8 (e4m3): `torch._scaled_mm` with row-wise scales (fp32 accumulation, the bias and the output
  dtype in the same call; CUDA sm89+, and the CPU where this torch's CPU `_scaled_mm` takes row-wise
  scales — torch 2.11's takes one scale per tensor only, older ones none: there the same product is
  computed in fp32 from the e4m3 values, `_cpu_rowwise_scaled_mm` decides once per process).
The GEMMs want aligned shapes (CUDA: K and N multiples of 16 for fp8, 8 for int8; M > 16 and a
multiple of 8 for torch._int_mm): for `_int_mm` rows are zero-padded up to a multiple of 16 (a zero
row has scale 1e-12 and gives a zero output row, dropped after); `_scaled_mm` takes any M, so the
fp8 path copies nothing (the padding copy of x cost ~0.1 ms per 14B GEMM). K and N come from the model (Wan: multiples of 16); a layer that is not
aligned is refused by `unaligned` when the engine quantizes it, not at run time.

`impl` picks the kernels ("torch": the reference, above; "triton": lightx2v.ops.triton.quant):
- w8a8-int8: the one-kernel activation quantizer, then one Triton GEMM with both scales and the
  bias in its epilogue (no int32 [M, N] in memory; no row padding: the kernel masks the rows).
- w8a8-fp8: the one-kernel quantizer, then `torch._scaled_mm` (cuBLAS, which fuses the scales).
- w8a16 (weight-only): the reference under both (dequantize, then cuBLAS). The Triton GEMM that
  converts the 8-bit weight in registers ran at 390-510 TFLOP/s at the 14B shapes on the H200
  against 690-800 for dequantize + cuBLAS (2026-11-30), so it is not dispatched to (the kernel,
  `lightx2v.ops.triton.quant.scaled_mm` with no activation scale, is kept and tested).
A layer whose in_features is not a multiple of 128 (the GEMM's K tile) computes with "torch".
QuantLinear carries the choice (`kernels`), set by the engine's kernels step with the fused ops.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448; the one definition (fp8.py, nvfp4.py import it)
ROW_ALIGN = 16
GEMM_IMPLS = ("torch", "triton")
TRITON_K_ALIGN = 128  # lightx2v.ops.triton.quant.K_ALIGN (not imported here: that module needs Triton)


def _triton(impl: str, in_features: int) -> bool:
    if impl not in GEMM_IMPLS:
        raise ValueError(f"unknown GEMM kernels {impl!r}; expected one of {', '.join(GEMM_IMPLS)}")
    return impl == "triton" and in_features % TRITON_K_ALIGN == 0


def quantize_rows(x: Tensor, qdtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (xq [M, K] qdtype, scale [M, 1] fp32): symmetric absmax per row (per token)."""
    xf = x.float()
    qmax = 127.0 if qdtype == torch.int8 else E4M3_MAX
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
    q = xf / scale
    if qdtype == torch.int8:
        return torch.round(q).clamp(-127, 127).to(torch.int8), scale
    return q.clamp(-E4M3_MAX, E4M3_MAX).to(qdtype), scale


def _rows(x: Tensor) -> tuple[Tensor, int]:
    """x [..., K] -> ([M_pad, K], M): rows zero-padded to a multiple of ROW_ALIGN (and past 16 rows)."""
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    pad = max(-m % ROW_ALIGN, 2 * ROW_ALIGN - m if m <= ROW_ALIGN else 0)
    return (F.pad(x2, (0, 0, 0, pad)) if pad else x2), m


def unaligned(in_features: int, out_features: int) -> Optional[str]:
    """Why an 8-bit GEMM cannot take a layer of this shape, or None."""
    if in_features % 16 or out_features % 16:
        return f"needs in and out features that are multiples of 16, got {in_features} x {out_features}"
    return None


def int8_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Optional[Tensor], impl: str = "torch") -> Tensor:
    """x [..., K] (float) with qweight int8 [N, K], w_scale fp32 [N, 1] -> [..., N] in x's dtype."""
    if _triton(impl, x.shape[-1]):
        from lightx2v.ops.triton import quant as tq

        x2 = x.reshape(-1, x.shape[-1])
        xq, xs = tq.quantize_rows(x2, torch.int8)
        y = tq.scaled_mm(xq, qweight, xs, w_scale, bias, x.dtype)
        return y.reshape(*x.shape[:-1], -1)
    x2, m = _rows(x)
    xq, xs = quantize_rows(x2, torch.int8)
    acc = torch._int_mm(xq, qweight.t())  # [M_pad, N] int32
    y = acc.float() * xs * w_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y[:m].to(x.dtype).reshape(*x.shape[:-1], -1)


def fp8_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Optional[Tensor], impl: str = "torch") -> Tensor:
    """x [..., K] (float) with qweight float8_e4m3fn [N, K], w_scale fp32 [N, 1] -> [..., N] in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    if _triton(impl, x.shape[-1]):
        from lightx2v.ops.triton import quant as tq

        xq, xs = tq.quantize_rows(x2, qweight.dtype)
    else:
        xq, xs = quantize_rows(x2, qweight.dtype)
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
    if x.device.type == "cpu" and not _cpu_rowwise_scaled_mm():
        # the same product as _scaled_mm's: e4m3 values exactly in fp32, fp32 accumulation, both scales after
        y = (xq.float() @ qweight.float().t()) * xs * w_scale.reshape(1, -1).float()
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)
    y = torch._scaled_mm(xq, qweight.t(), scale_a=xs, scale_b=w_scale.reshape(1, -1).float(),
                         bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return y[:m].to(x.dtype).reshape(*x.shape[:-1], -1)


_CPU_ROWWISE: Optional[bool] = None


def _cpu_rowwise_scaled_mm() -> bool:
    """Whether this torch's CPU `_scaled_mm` takes row-wise scales (asked once, with a 16 x 16 probe)."""
    global _CPU_ROWWISE
    if _CPU_ROWWISE is None:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        try:
            y = torch._scaled_mm(a, a.t(), scale_a=torch.full((16, 1), 2.0), scale_b=torch.full((1, 16), 3.0),
                                 out_dtype=torch.float32)
            _CPU_ROWWISE = bool((y == 96.0).all())
        except (RuntimeError, NotImplementedError, AttributeError, TypeError):
            _CPU_ROWWISE = False
    return _CPU_ROWWISE


def fp8_gemm_available(device: torch.device) -> Optional[str]:
    """None if fp8 GEMMs run on `device` (CUDA sm89+, or the CPU), else the reason."""
    if device.type == "cpu":
        _cpu_rowwise_scaled_mm()  # asked here, outside any compiled region
        return None
    if device.type != "cuda":
        return f"needs a CUDA GPU or the CPU, got {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major * 10 + minor < 89:
        return (f"fp8 tensor cores need compute capability sm89+ (Ada, Hopper, Blackwell); this GPU is "
                f"sm{major}{minor}: use the weight-only scheme w8a16-fp8 (or w8a8-int8)")
    return None
