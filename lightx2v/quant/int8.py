"""w8a8-int8: int8 weights, one symmetric absmax scale per output channel.

The format of LightX2V's int8 checkpoints (its converter, `--linear_dtype torch.int8`):
`<name>.weight` int8 [out, in] = round(w / scale) clamped to [-128, 127], and
`<name>.weight_scale` [out, 1] = max(|w| over the row, 1e-5) / 127. LightX2V computes with the
scale in fp32 whatever dtype the file stores it in; we load it as fp32 too.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lightx2v.quant.base import QuantScheme


class Int8WeightOnly(QuantScheme):
    """`w8a16-int8`: the int8 weights dequantized to the activation dtype before a float GEMM."""

    name = "w8a16-int8"
    qdtype = torch.int8
    per_channel = True
    qmax = 127.0
    storage = "int8-per-channel"

    def _round(self, w: Tensor) -> Tensor:
        return torch.round(w).clamp(-128, 127).to(torch.int8)


class Int8PerChannel(Int8WeightOnly):
    """`w8a8-int8`: activations quantized per token, an int8 GEMM (`torch._int_mm`), scales after."""

    name = "w8a8-int8"

    def forward(self, x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor], impl: str = "torch") -> Tensor:
        from lightx2v.quant.gemm import int8_linear

        return int8_linear(x, qweight, scale, bias, impl)
