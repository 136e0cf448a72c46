"""Fused QKV: self-attention's q, k and v projections as one GEMM, arranged at load (no file change).

Design: `fuse_qkv(model)` finds every module with `qkv_weight` / `qkv_bias` slots (the Wan
SelfAttention) whose q, k, v are plain `nn.Linear` of one dtype and device, concatenates their
weights into one [3C, C] tensor (and biases into [3C]) and makes q.weight / k.weight / v.weight
(and the biases) Parameters that are VIEWS into it: the state_dict keeps its keys and its values,
a LoRA merge or an in-place copy into q.weight lands in the fused tensor, and the weights are held
once (the three old tensors are freed; only the copy itself briefly needs 3C*C more).

Quantized q, k, v (lightx2v.quant.QuantLinear of one per-channel scheme: w8a8 / w8a16 int8 and
fp8) fuse the same way: their 8-bit weights into one [3C, C] tensor and their per-channel scales into
one [3C, 1], so the activations are quantized once and one 8-bit GEMM of N = 3C runs (the fp8 GEMM ran
at 963-1018 TFLOP/s at N = 5120 and 1,221 at N = 13,824 on the H200: wider is faster).
What is skipped, and said in the returned log lines:
- quantized layers of another kind (nvfp4: block scales; a per-tensor scale; schemes or kernels
  that differ between q, k and v);
- layers with forward hooks (a dynamic LoRA applied at load): the hooks must see q, k, v apart;
- a hook added after fusing (`LightX2V.set_lora` later) is noticed at every forward
  (`SelfAttention._project` checks q/k/v for hooks: three dict truth tests) and that layer then
  runs q, k, v apart, so a dynamic LoRA is never silently skipped; under torch.compile the
  blocks guard on hooks (runtime.engine.compile_blocks) and recompile;
- a q/k/v layer replaced after fusing (quantized by hand, a weight assigned) is noticed at forward
  time too (`SelfAttention.qkv_fused`: the fused Parameters are still the layers' weights) and runs
  apart; `fuse_qkv` again re-fuses what it can;
- moving the module (`.to()`: new storage for each parameter) drops the fusion (SelfAttention._apply);
  model offload moves parameters by `.data` assignment without `_apply`, so the engine does not
  fuse an offloaded DiT.
`unfuse_qkv(model)` gives every layer its own storage back.
"""

from __future__ import annotations

import torch
from torch import nn


def _slots(model: nn.Module):
    for name, m in model.named_modules():
        if hasattr(m, "qkv_weight") and all(hasattr(m, a) for a in ("q", "k", "v")):
            yield name, m


def _why_not(m: nn.Module) -> str | None:
    from lightx2v.quant import QuantLinear

    layers = (m.q, m.k, m.v)
    if all(isinstance(x, QuantLinear) for x in layers):
        reason = _why_not_quantized(layers)
        if reason is not None:
            return reason
    elif any(type(x) is not nn.Linear for x in layers):
        return "not plain nn.Linear"
    if any(x._forward_hooks or x._forward_pre_hooks for x in layers):
        return "hooked (dynamic LoRA)"
    ws = [x.weight for x in layers]
    if len({(w.dtype, w.device, tuple(w.shape)) for w in ws}) != 1 or ws[0].device.type == "meta":
        return "weights differ in dtype, device or shape"
    biases = [x.bias for x in layers]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return "some have a bias, some not"
    return None


def _why_not_quantized(layers) -> str | None:
    # what quantized q, k, v need beyond plain ones: one scheme, one scale per output channel
    q = layers[0]
    if any(x.scheme is not q.scheme or x.kernels != q.kernels or x.compute_dtype != q.compute_dtype for x in layers):
        return "quantized with different schemes or kernels"
    if q.quant_names != ("weight", "weight_scale") or q.weight_scale.shape != (q.out_features, 1):
        return f"quantized ({q.scheme.name}: not one scale per output channel)"
    return None


@torch.no_grad()
def _fuse_quantized(m: nn.Module) -> None:
    layers = (m.q, m.k, m.v)
    out = layers[0].out_features
    weight = torch.cat([x.weight.detach() for x in layers])         # [3C, C] int8 / float8
    scale = torch.cat([x.weight_scale.detach() for x in layers])    # [3C, 1] fp32
    bias = None if layers[0].bias is None else torch.cat([x.bias.detach() for x in layers])  # [3C]
    for i, x in enumerate(layers):
        rows = slice(i * out, (i + 1) * out)
        x.weight = nn.Parameter(weight[rows], requires_grad=False)
        x.weight_scale = nn.Parameter(scale[rows], requires_grad=False)
        if bias is not None:
            x.bias = nn.Parameter(bias[rows], requires_grad=False)
    m.qkv_weight, m.qkv_bias, m.qkv_scale = weight, bias, scale
    m.qkv_params = (m.q.weight, m.k.weight, m.v.weight)


@torch.no_grad()
def _fuse_one(m: nn.Module) -> None:
    from lightx2v.quant import QuantLinear

    if isinstance(m.q, QuantLinear):
        return _fuse_quantized(m)
    layers = (m.q, m.k, m.v)
    out = layers[0].weight.shape[0]
    weight = torch.cat([x.weight.detach() for x in layers])  # [3C, C]
    bias = None if layers[0].bias is None else torch.cat([x.bias.detach() for x in layers])  # [3C]
    for i, x in enumerate(layers):
        rows = slice(i * out, (i + 1) * out)
        x.weight = nn.Parameter(weight[rows], requires_grad=x.weight.requires_grad)
        if bias is not None:
            x.bias = nn.Parameter(bias[rows], requires_grad=x.bias.requires_grad)
    m.qkv_weight, m.qkv_bias, m.qkv_params = weight, bias, (m.q.weight, m.k.weight, m.v.weight)
    m.qkv_scale = None


def fuse_qkv(model: nn.Module) -> list[str]:
    """Fuse q/k/v of every eligible self-attention of `model` in place; returns log lines (what was
    fused, and each reason a layer was skipped with its count)."""
    fused, skipped = 0, {}
    for _, m in _slots(model):
        if m.qkv_fused():
            fused += 1
            continue
        m.qkv_weight, m.qkv_bias, m.qkv_params = None, None, ()  # stale (a layer replaced since): again
        reason = _why_not(m)
        if reason is None:
            _fuse_one(m)
            fused += 1
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    lines = [f"{fused} self-attention layers" + (" (q, k, v as one GEMM)" if fused else "")]
    lines += [f"{n} skipped: {why}" for why, n in skipped.items()]
    return lines


@torch.no_grad()
def unfuse_qkv(model: nn.Module) -> int:
    """Give q, k, v of every fused layer their own storage again; returns how many were fused."""
    n = 0
    for _, m in _slots(model):
        if not m.qkv_fused():
            m.qkv_weight, m.qkv_bias, m.qkv_params = None, None, ()
            continue
        for x in (m.q, m.k, m.v):
            x.weight = nn.Parameter(x.weight.detach().clone(), requires_grad=x.weight.requires_grad)
            if getattr(m, "qkv_scale", None) is not None:
                x.weight_scale = nn.Parameter(x.weight_scale.detach().clone(), requires_grad=False)
            if x.bias is not None:
                x.bias = nn.Parameter(x.bias.detach().clone(), requires_grad=x.bias.requires_grad)
        m.qkv_weight, m.qkv_bias, m.qkv_params, m.qkv_scale = None, None, (), None
        n += 1
    return n
