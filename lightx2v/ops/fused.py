"""One dispatch point for the fused ops of a DiT block (norm + modulation, q/k norm + RoPE,
gated residual, an MLP's up-projection + GELU).

Design (as lightx2v.ops.attention): a read-only registry of small frozen `FusedOps` objects, each
with a `name`, a capability check `available(device, dtype) -> str | None` (None: it can run;
otherwise why not) and four ops:

    norm_modulate(x, shift, scale, eps, out_dtype)   LayerNorm(x) * (1 + scale) + shift, cast to out_dtype
        x: [B, L, C] fp32 residual; shift, scale: [B, 1 | L, C] fp32 -> [B, L, C] out_dtype
    qk_norm_rope(x, weight, eps, rope, num_heads, out_dtype, per_head=False)   RoPE(RMSNorm(x) * weight), cast
        x: [B, L, C] a q or k projection; weight [C] (the norm across the heads, Wan's), or with
        per_head [D] (each head's own norm, HunyuanVideo-1.5's); rope [L, 1, D/2, 2], or None (no
        rotation: a text stream) -> [B, L, H, D] out_dtype
    gated_residual(x, y, gate)   x + y * gate in fp32, a NEW tensor (no input is written)
        x: [B, L, C] fp32; y: [B, L, C] (the layer's dtype); gate [B, 1 | L, C] fp32 -> [B, L, C] fp32
    linear_gelu(layer, x)   GELU(tanh)(layer(x)): an FFN's up-projection and its activation
        x: [B, L, C] in the layer's compute dtype -> [B, L, F]; "triton" takes cuBLASLt's GELU epilogue
        (`torch._addmm_activation`, the tanh form on CUDA) for a plain, unhooked nn.Linear with a bias
        on a CUDA bf16/fp16 input (one rounding instead of two, no separate pass over the [B, L, F]
        activations: -0.4 ms per 14B block compiled on an H200), the reference otherwise

"torch" is the reference: exactly the expressions the blocks computed before this module existed
(so the default is bit-identical to them); "triton" runs the kernels of lightx2v.ops.triton.norms
(one pass over memory each), which match the reference to fp32 rounding before the final cast,
when the block runs eagerly; inside a compiled block its three elementwise ops are the reference
(`_eager_only`: Inductor fuses them with their neighbours, measured faster than the kernels there)
and only `linear_gelu`'s GEMM epilogue, which Inductor does not do, stays.
Blocks read `module.fused_ops` (set by `set_fused_backend`, the engine's "kernels" step); the Triton
module is imported on first use, so importing this module needs no Triton.
`resolve_fused(name, device, dtype)`: "auto" is triton where it compiles for real (CUDA), else
torch; an explicit name that cannot run is a LightX2VError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.ops.registry import lookup, require

Check = Callable[[torch.device, torch.dtype], "str | None"]


def _torch_linear_gelu(layer: nn.Module, x: Tensor) -> Tensor:
    # the FFNs' nn.Linear then nn.GELU(approximate="tanh"), as the blocks computed them
    return F.gelu(layer(x), approximate="tanh")


@dataclass(frozen=True)
class FusedOps:
    """A named set of the fused ops (three elementwise, the MLP's linear_gelu) with a capability check."""

    name: str
    check: Check
    norm_modulate: Callable[..., Tensor]
    qk_norm_rope: Callable[..., Tensor]
    gated_residual: Callable[..., Tensor]
    description: str = ""
    linear_gelu: Callable[[nn.Module, Tensor], Tensor] = _torch_linear_gelu

    def available(self, device: torch.device | str, dtype: torch.dtype) -> str | None:
        """None if these ops can run on `device` with `dtype`, else the reason they cannot."""
        return self.check(torch.device(device), dtype)

    def __repr__(self) -> str:
        return f"FusedOps({self.name!r})"


# ---------------------------------------------------------------- the reference (today's math)


def _torch_norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    # LayerNormFP32 without affine, then the modulation, in fp32; one cast for the next Linear
    return (F.layer_norm(x.float(), (x.shape[-1],), None, None, eps) * (1 + scale) + shift).to(out_dtype)


def _torch_qk_norm_rope(x: Tensor, weight: Tensor, eps: float, rope: Tensor | None, num_heads: int,
                        out_dtype: torch.dtype, per_head: bool = False) -> Tensor:
    from lightx2v.models.wan.dit_blocks import apply_rope

    # RMSNormFP32 over the whole width then split into heads (Wan), or over each head (per_head:
    # HunyuanVideo-1.5's RMSNormFP32(head_dim) on [B, L, H, D]); RoPE in fp32 (None: none); one cast
    if per_head:
        normed = F.rms_norm(x.float().unflatten(-1, (num_heads, -1)), (x.shape[-1] // num_heads,), weight.float(), eps)
    else:
        normed = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).unflatten(-1, (num_heads, -1))
    return (normed if rope is None else apply_rope(normed, rope)).to(out_dtype)


def _torch_gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    return x + y.float() * gate


# ---------------------------------------------------------------- Triton (lightx2v.ops.triton.norms)


def _eager_only(triton_fn: Callable[..., Tensor], torch_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`triton_fn` when running eagerly, `torch_fn` (the reference) while torch.compile traces: Inductor
    fuses the reference with its neighbours, which measured as fast or faster than our kernels inside
    a compiled block (docs/benchmarks.md; q/k norm + RoPE 0.58 ms compiled vs 0.78 ms Triton per 14B block)."""

    def op(*args, **kwargs) -> Tensor:
        return (torch_fn if torch.compiler.is_compiling() else triton_fn)(*args, **kwargs)

    op.__name__ = triton_fn.__name__
    return op


def _triton_norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    import lightx2v.ops.triton.norms  # noqa: F401  (registers the lightx2v:: ops)

    return torch.ops.lightx2v.norm_modulate(x, shift, scale, float(eps), out_dtype)


def _triton_qk_norm_rope(x: Tensor, weight: Tensor, eps: float, rope: Tensor | None, num_heads: int,
                         out_dtype: torch.dtype, per_head: bool = False) -> Tensor:
    import lightx2v.ops.triton.norms  # noqa: F401

    out = torch.ops.lightx2v.qk_norm_rope(x, weight, float(eps), rope, int(num_heads), out_dtype, bool(per_head))
    return out.unflatten(-1, (num_heads, -1))


def _triton_gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    import lightx2v.ops.triton.norms  # noqa: F401

    return torch.ops.lightx2v.gated_residual(x, y, gate)


def _epilogue_linear_gelu(layer: nn.Module, x: Tensor) -> Tensor:
    # cuBLASLt's bias + GELU epilogue (ATen's CUDA _addmm_activation is the tanh form, as Wan's FFN);
    # anything else -- a quantized or hooked layer (dynamic LoRA), no bias, the CPU -- takes the reference
    if (type(layer) is nn.Linear and layer.bias is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
            and layer.weight.dtype == x.dtype and not layer._forward_hooks and not layer._forward_pre_hooks):
        out = torch._addmm_activation(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.t(), use_gelu=True)
        return out.unflatten(0, x.shape[:-1])
    return _torch_linear_gelu(layer, x)


# ---------------------------------------------------------------- capability checks


def _any(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _interpreted() -> bool:
    # Triton's own switch (its interpreter runs kernels on CPU tensors); the test suite sets it
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_triton(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"needs bfloat16, float16 or float32, got {dtype}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available in this torch build or machine"
    elif not (device.type == "cpu" and _interpreted()):
        return f"needs a CUDA device, got {device.type} (CPU only under TRITON_INTERPRET=1, for tests)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install raises more than ImportError
        return f"package 'triton' cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]
    return None


_OPS: Mapping[str, FusedOps] = MappingProxyType(
    {
        o.name: o
        for o in (
            FusedOps("torch", _any, _torch_norm_modulate, _torch_qk_norm_rope, _torch_gated_residual,
                     "torch ops, the reference (the blocks' original expressions)"),
            FusedOps("triton", _check_triton, _eager_only(_triton_norm_modulate, _torch_norm_modulate),
                     _eager_only(_triton_qk_norm_rope, _torch_qk_norm_rope),
                     _eager_only(_triton_gated_residual, _torch_gated_residual),
                     "fused Triton kernels, one pass over memory each (lightx2v.ops.triton.norms); the FFN's "
                     "GELU in cuBLASLt's epilogue", linear_gelu=_epilogue_linear_gelu),
        )
    }
)


def list_fused() -> list[str]:
    """Names of all registered FusedOps (whether or not they can run here)."""
    return list(_OPS)


def get_fused(name: str) -> FusedOps:
    """The registered FusedOps called `name`, without checking that it can run."""
    return lookup(_OPS, name, "kernels")


def resolve_fused(name: str, device: torch.device | str, dtype: torch.dtype) -> FusedOps:
    """The FusedOps for `name` ("auto" | "torch" | "triton") on `device` with `dtype`.

    "auto": triton on a CUDA device where it can run (never the CPU interpreter: far slower than
    torch), else torch. Raises LightX2VError if the name is unknown or cannot run here."""
    device = torch.device(device)
    if name == "auto":
        triton_ops = _OPS["triton"]
        if device.type == "cuda" and triton_ops.available(device, dtype) is None:
            return triton_ops
        return _OPS["torch"]
    return require(_OPS, name, device, dtype, "kernels")


def set_fused_backend(model: nn.Module, ops: FusedOps) -> int:
    """Put `ops` on every submodule of `model` that has a `fused_ops` attribute, and the same kernels
    ("torch" | "triton") on its quantized linears (`kernels`: lightx2v.quant.gemm); returns how many
    modules took the fused ops."""
    from lightx2v.quant.base import QuantLinear

    n = 0
    for module in model.modules():
        if hasattr(module, "fused_ops"):
            module.fused_ops = ops
            n += 1
        elif isinstance(module, QuantLinear):
            module.kernels = ops.name
    return n
