"""w8a8-int8: int8 weights, one symmetric absmax scale per output channel.

The format of LightX2V's int8 checkpoints (its converter, `--linear_dtype torch.int8`):
`<name>.weight` int8 [out, in] = round(w / scale) clamped to [-128, 127], and
`<name>.weight_scale` [out, 1] = max(|w| over the row, 1e-5) / 127. LightX2V computes with the
scale in fp32 whatever dtype the file stores it in; we load it as fp32 too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightx2v.quant.base import QuantScheme


class Int8PerChannel(QuantScheme):
    name = "w8a8-int8"
    qdtype = torch.int8
    per_channel = True
    qmax = 127.0

    def _round(self, w: Tensor) -> Tensor:
        return torch.round(w).clamp(-128, 127).to(torch.int8)
