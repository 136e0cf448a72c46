"""float8 (e4m3) weights: per output channel (LightX2V) and per tensor (ComfyUI "scaled fp8").

- `w8a8-fp8` (LightX2V, converter `--linear_dtype torch.float8_e4m3fn`): `<name>.weight`
  float8_e4m3fn [out, in] = w / scale clipped to +-448 and rounded to nearest,
  `<name>.weight_scale` [out, 1] = max(|w| over the row, 1e-5) / 448.
- `fp8-scaled` (ComfyUI's scaled fp8, e.g. Comfy-Org's `*_fp8_scaled.safetensors`, and LightX2V's
  `--comfyui_mode` output): one scalar per tensor, stored as `<name>.scale_weight` (shape [], fp32)
  next to the float8 `<name>.weight`, with a `scaled_fp8` marker tensor in the file. ComfyUI
  computes `weight * scale_weight`. It loads here by renaming `scale_weight` -> `weight_scale`
  (shape []); `<name>.scale_input` (ComfyUI's static activation scale for its fp8 matmul) is not
  used by the dequantizing path and is dropped on load (lightx2v.loading.dit_files).
  A float8 file with no scales at all (a plain cast) is this scheme with scale 1.

torch stores and casts float8_e4m3fn on the CPU too (the cast rounds to nearest even); values
beyond +-448 must be clipped first, since e4m3fn has no infinity.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lightx2v.quant.base import QuantScheme
from lightx2v.quant.gemm import E4M3_MAX  # 448


class Fp8WeightOnly(QuantScheme):
    """`w8a16-fp8`: the fp8 weights dequantized to the activation dtype before a float GEMM (any GPU, the CPU)."""

    name = "w8a16-fp8"
    qdtype = torch.float8_e4m3fn
    per_channel = True
    qmax = E4M3_MAX
    storage = "fp8-per-channel"

    def _round(self, w: Tensor) -> Tensor:
        return w.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


class Fp8PerChannel(Fp8WeightOnly):
    """`w8a8-fp8`: activations quantized per token to e4m3, `torch._scaled_mm` with row-wise scales."""

    name = "w8a8-fp8"

    def available(self, device: torch.device) -> Optional[str]:
        from lightx2v.quant.gemm import fp8_gemm_available

        return fp8_gemm_available(device)

    def forward(self, x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor], impl: str = "torch") -> Tensor:
        from lightx2v.quant.gemm import fp8_linear

        return fp8_linear(x, qweight, scale, bias, impl)


class Fp8PerTensor(Fp8WeightOnly):
    """ComfyUI's scaled fp8 (one scale per tensor): computed weight-only (dequantized)."""

    name = "fp8-scaled"
    per_channel = False
    storage = "fp8-per-tensor"
