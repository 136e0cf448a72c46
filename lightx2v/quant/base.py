"""Quantization as a method object on a linear layer (DESIGN principle 5, vLLM's QuantizeMethodBase).

Design: a `QuantScheme` is a stateless object that knows one weight format: how to quantize a
float weight `[out, in]` into `(qweight, scale)`, how to dequantize it, and how to compute a
linear layer with it. `QuantLinear` is the layer: it holds `weight` (int8 / float8), `weight_scale`
(float32) and `bias` under exactly the names LightX2V's quantized checkpoints use
(`<name>.weight`, `<name>.weight_scale`, `<name>.bias`), so a pre-quantized file loads by name.
`apply_quant(model, scheme)` is the transform that swaps `nn.Linear` modules for `QuantLinear`:
on a meta-built model (before loading a pre-quantized file) or on a loaded one (quantizing its
weights). The model's `forward` never knows.

A scheme may store more than `weight` and `weight_scale` (NVFP4: packed FP4 weights, e4m3 block
scales and fp32 global scales): it declares every stored tensor in `tensor_specs(out, in)` (name,
shape, dtype, and a default for tensors a file may omit), and `QuantLinear` makes one Parameter per
entry, under the scheme's names, so the state dict keys are the file's. The general entry points
are `quantize_tensors` / `dequantize_tensors` / `apply(layer, x)` / `from_file`; for the one-scale
schemes they call the two-tensor `quantize` / `dequantize` / `forward`, which stay as they were.

The base compute path is the reference one: dequantize the weight to the activation dtype and call
`F.linear` (the weight-only schemes `w8a16-*` compute so). The w8a8 schemes override `forward` with
per-token activation quantization and an 8-bit GEMM (lightx2v.quant.gemm); the reference stays
to test them against (principle 10).

Caveat: do not call `model.to(dtype)` on a quantized model: torch casts every floating tensor,
float8 weights included. Move with `model.to(device)` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import InputError


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor of a quantized layer (the bias aside)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    # None: quantize_tensors makes it and a file must hold it; a number: optional (a file may omit
    # it, quantizing does not make it): the layer starts with this value
    default: Optional[float] = None


class QuantScheme:
    """One quantized weight format. Subclasses set `name`, `qdtype`, `per_channel`, `qmax` and
    implement `_round` (float values already divided by the scale -> `qdtype`)."""

    name: str = ""
    qdtype: torch.dtype = torch.int8
    per_channel: bool = True  # scale [out, 1] (one per output channel); else one scalar []
    qmax: float = 127.0
    min_absmax: float = 1e-5  # floor of |w|max, so an all-zero row gets a finite scale (as LightX2V)
    # the stored format: schemes of one storage load the same tensors and differ only in how they
    # compute (w8a8: 8-bit activations and GEMM; w8a16: weight-only, dequantized before the GEMM)
    storage: str = ""

    def available(self, device: torch.device) -> Optional[str]:
        """None if this scheme computes on `device`, else the reason (naming what to use instead)."""
        return None

    def scale_shape(self, out_features: int) -> tuple[int, ...]:
        return (out_features, 1) if self.per_channel else ()

    # ---- the general interface (any number of stored tensors); one-scale schemes use the defaults

    # the non-bias tensor names a file may hold for one layer (read by lightx2v.loading.dit_files)
    file_leaves: tuple[str, ...] = ("weight", "weight_scale")

    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        """Every stored tensor of a layer [out, in] but the bias, in state-dict order."""
        return {"weight": TensorSpec((out_features, in_features), self.qdtype),
                "weight_scale": TensorSpec(self.scale_shape(out_features), torch.float32)}

    def logical_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, int]:
        """(out, in) of a layer from its stored `weight` shape (packed formats store fewer columns)."""
        return tuple(weight_shape)

    def check_shape(self, in_features: int, out_features: int) -> Optional[str]:
        """Why this scheme cannot store a layer of this shape, or None."""
        return None

    def quantize_tensors(self, weight: Tensor) -> dict[str, Tensor]:
        """A float weight [out, in] -> the stored tensors without a default (see `tensor_specs`)."""
        q, s = self.quantize(weight)
        return {"weight": q, "weight_scale": s}

    def dequantize_tensors(self, tensors: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        """The stored tensors of a layer -> its weight [out, in] in `dtype`."""
        return self.dequantize(tensors["weight"], tensors["weight_scale"], dtype)

    def apply(self, layer: "QuantLinear", x: Tensor) -> Tensor:
        """The layer's compute: x [..., in] (already in its compute dtype) -> [..., out]."""
        return self.forward(x, layer.weight, layer.weight_scale, layer.bias, layer.kernels)

    def from_file(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A layer's tensors as a file holds them (`file_leaves` found) -> the layer's state
        (one-scale schemes: the scale reshaped to [out, 1] or []; 1 where a float8 file has none)."""
        weight, scale = tensors["weight"], tensors.get("weight_scale")
        shape = self.scale_shape(weight.shape[0])
        return {"weight": weight, "weight_scale": torch.ones(shape) if scale is None else scale.reshape(shape)}

    def _round(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def quantize(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Symmetric absmax quantization: weight [out, in] -> (qweight [out, in] qdtype, scale fp32)."""
        if weight.ndim != 2:
            raise ValueError(f"{self.name}: expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
        w = weight.float()
        absmax = w.abs().amax(dim=1, keepdim=True) if self.per_channel else w.abs().amax()
        scale = absmax.clamp(min=self.min_absmax) / self.qmax  # [out, 1] or []
        return self._round(w / scale), scale

    def dequantize(self, qweight: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """(qweight [out, in], scale) -> weight [out, in] in `dtype`; the product is taken in fp32."""
        return (qweight.float() * scale.float()).to(dtype)

    def forward(self, x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor], impl: str = "torch") -> Tensor:
        """Weight-only compute: x [..., in] -> [..., out] in x's dtype: dequantize, then F.linear,
        whatever `impl` (dequantize + cuBLAS beat our Triton weight-only GEMM on the H200:
        lightx2v.quant.gemm)."""
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return F.linear(x, self.dequantize(qweight, scale, x.dtype), bias)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class QuantLinear(nn.Module):
    """A Linear with a quantized weight. State dict: the scheme's `tensor_specs` (one-scale
    schemes: `weight` (qdtype [out, in]), `weight_scale` (fp32, [out, 1] or [])), then `bias`
    ([out], in the compute dtype)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, scheme: QuantScheme,
        compute_dtype: torch.dtype = torch.bfloat16, device: Union[torch.device, str, None] = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        # the activation dtype: lightx2v.models.wan.dit_blocks.compute_dtype() reads this attribute
        self.compute_dtype = compute_dtype
        # which GEMM kernels compute it ("torch" reference | "triton"; lightx2v.quant.gemm): set by the
        # engine's kernels step (lightx2v.ops.fused.set_fused_backend), with the block's fused ops
        self.kernels = "torch"
        # Parameters (not buffers) so that transforms that walk parameters (offload, LoRA) see them
        specs = scheme.tensor_specs(out_features, in_features)
        self.quant_names = tuple(specs)
        for name, spec in specs.items():
            t = torch.empty(spec.shape, dtype=spec.dtype, device=device)
            if spec.default is not None and t.device.type != "meta":
                t.fill_(spec.default)
            setattr(self, name, nn.Parameter(t, requires_grad=False))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: QuantScheme, compute_dtype: Optional[torch.dtype] = None) -> "QuantLinear":
        """Quantize a loaded Linear (or make an empty one of the same shape if it is on meta)."""
        dt = compute_dtype or linear.weight.dtype
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, dt, linear.weight.device)
        if linear.weight.device.type != "meta":
            q.set_weight(linear.weight)
            if linear.bias is not None:
                q.bias = nn.Parameter(linear.bias.detach().to(dt), requires_grad=False)
        return q

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., in] -> [..., out] in the compute dtype
        return self.scheme.apply(self, x.to(self.compute_dtype))

    def quant_tensors(self) -> dict[str, Tensor]:
        """The stored tensors but the bias, by name (`weight`, `weight_scale`, ...)."""
        return {n: getattr(self, n) for n in self.quant_names}

    def tensor_dtype(self, name: str) -> torch.dtype:
        """The dtype this layer keeps `name` in (a stored tensor's, or the compute dtype: the bias)."""
        spec = self.scheme.tensor_specs(self.out_features, self.in_features).get(name)
        return self.compute_dtype if spec is None else spec.dtype

    def quantized_state(self, weight: Tensor) -> dict[str, Tensor]:
        """Every stored tensor for a float `weight` [out, in]: what the scheme makes, and the
        defaults of the optional ones (a float file quantized while it loads)."""
        out = self.scheme.quantize_tensors(weight)
        for name, spec in self.scheme.tensor_specs(self.out_features, self.in_features).items():
            if name not in out and spec.default is not None:
                out[name] = torch.full(spec.shape, spec.default, dtype=spec.dtype, device=weight.device)
        return out

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight [out, in] this layer computes with (fp32 by default: for LoRA merging)."""
        return self.scheme.dequantize_tensors(self.quant_tensors(), dtype)

    @torch.no_grad()
    def set_weight(self, weight: Tensor) -> None:
        """Quantize `weight` [out, in] and store it in place (LoRA: dequantize, merge, requantize)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"set_weight: shape {tuple(weight.shape)}, expected {(self.out_features, self.in_features)}")
        for name, t in self.scheme.quantize_tensors(weight.to(self.weight.device)).items():
            getattr(self, name).copy_(t)  # optional tensors (a calibrated input scale) are kept

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme.name}, compute_dtype={self.compute_dtype}, kernels={self.kernels}")


def _selected(name: str, targets: Union[str, Iterable[str]]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets


def apply_quant(
    model: nn.Module,
    scheme: Union[str, QuantScheme],
    *,
    targets: Union[str, Iterable[str], None] = None,
    skip: Iterable[str] = (),
    compute_dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Replace the selected `nn.Linear` modules of `model` by `QuantLinear` (in place; returns model).

    targets: a regex matched against full module names, or a collection of exact names (those a
    pre-quantized file holds); default: the linears the model declares quantizable (its
    `_quant_linears` regex; a model that declares none is an error, never a guess). skip: substrings of module
    names to leave in float. compute_dtype: the activation dtype (needed on a meta-built model,
    whose weights are fp32 placeholders); default: each linear's weight dtype. Modules the model
    keeps in fp32 (`_keep_in_fp32`) compute in fp32 whatever `compute_dtype` says.
    """
    if isinstance(scheme, str):
        from lightx2v.quant import get_scheme

        scheme = get_scheme(scheme)
    if targets is None:
        targets = getattr(model, "_quant_linears", None)
        if targets is None:
            raise InputError(f"{type(model).__name__} declares no quantizable linears (_quant_linears); "
                             "pass targets= to choose them")
    if not isinstance(targets, str):
        targets = frozenset(targets)
    skip = tuple(skip)
    keep = tuple(getattr(model, "_keep_in_fp32", ()))
    chosen = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and _selected(name, targets) and not any(s in name for s in skip)
    ]
    if not chosen:
        raise InputError(f"quantization {scheme.name} matched no linear layer of {type(model).__name__} "
                         f"(targets {targets if isinstance(targets, str) else sorted(targets)[:3]})")
    if scheme.name.startswith("w8a8"):
        from lightx2v.quant.gemm import unaligned

        for name, linear in chosen:
            reason = unaligned(linear.in_features, linear.out_features)
            if reason is not None:
                raise InputError(f"{scheme.name} cannot compute {name}: its 8-bit GEMM {reason} "
                                 f"(use the weight-only {scheme.name.replace('w8a8', 'w8a16')})")
    for name, linear in chosen:
        reason = scheme.check_shape(linear.in_features, linear.out_features)
        if reason is not None:
            raise InputError(f"{scheme.name} cannot quantize {name}: {reason}")
    for name, linear in chosen:
        dt = torch.float32 if any(p in name for p in keep) else compute_dtype
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(linear, scheme, dt))
    return model
