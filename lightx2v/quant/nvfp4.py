"""NVFP4: 4-bit e2m1 weights (and activations) with e4m3 scales per 16 values and an fp32 global scale.

The format (NVIDIA's NVFP4, as LightX2V's converter `--linear_type nvfp4` writes it with its
`scaled_nvfp4_quant` kernel; docs/formats.md, "nvfp4", names the files this was read from):

    global_scale  gs = 6 * 448 / max|W|                      (2688 / amax; fp32 [], `weight_global_scale`)
    block scale   s  = e4m3(gs * max|W[r, 16b:16b+16]| / 6)  (e4m3, saturating; `weight_scale`)
    value         q  = e2m1(W * gs / s)                       (round to nearest even, saturating at +-6)
    W ~= q * s / gs

- e2m1 codes: bit 3 the sign, bits 0-2 index (0, 0.5, 1, 1.5, 2, 3, 4, 6); two per uint8 byte,
  the even column in the low nibble (`<name>.weight` uint8 [out, in / 2]).
- the block scales [out, in / 16] are stored in the cutlass / tcgen05 "128x4" swizzled layout,
  zero-padded to [round_up(out, 128), round_up(in / 16, 4)] (`swizzle_scales`).
- LightX2V's activations use a static `input_global_scale` (2688 / a calibrated max|x|, with
  `alpha = 1 / (input_global_scale * weight_global_scale)` in the file instead of
  `weight_global_scale`) when the file has one; a file straight from its converter has none.

Schemes (one storage, "nvfp4"):
- `w4a4-nvfp4`: activations quantized to NVFP4 as the weights (per 16 values, e4m3 block scales)
  with the layer's calibrated `input_global_scale`, or, where the file has none (0 here),
  2688 / max|x| of each call's whole activation tensor (dynamic; our choice: LightX2V needs the
  calibrated one). The FP4 GEMM needs sm100+ tensor cores, which lightx2v does not drive yet:
  `available` refuses every CUDA GPU; the CPU computes the reference (both operands dequantized,
  an fp32 GEMM: the products q*s are exact, as in the tensor cores).
- `w4a16-nvfp4`: the same tensors, the weight dequantized to the activation dtype before the GEMM
  (any GPU, the CPU).

The weight is quantized as LightX2V's converter does: from its bf16 cast, the global scale
computed in bf16. The one difference is its kernel's approximate reciprocal (`rcp.approx`) where we
divide exactly, which can move a value lying on a rounding boundary by one FP4 step.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightx2v.errors import CheckpointError
from lightx2v.quant.base import QuantScheme, TensorSpec
from lightx2v.quant.gemm import E4M3_MAX  # one definition (448)

BLOCK = 16  # values per block scale, along the input dimension
E2M1_MAX = 6.0
GLOBAL_SCALE_NUMERATOR = E2M1_MAX * E4M3_MAX  # 2688: gs = 2688 / amax maps the largest block scale to 448
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitudes of codes 0..7; code | 8 is the negative
TILE_ROWS, TILE_COLS = 128, 4  # the swizzled scale layout's tile
_MIN_AMAX = 1e-12  # an all-zero tensor gets a finite global scale (its block scales are then 0)


def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def scale_layout_shape(rows: int, in_features: int) -> tuple[int, int]:
    """The stored (swizzled, padded) block-scale shape of a [rows, in_features] matrix."""
    return round_up(rows, TILE_ROWS), round_up(in_features // BLOCK, TILE_COLS)


# ---------------------------------------------------------------- e2m1 values and nibbles


def _thresholds() -> tuple[tuple[float, bool], ...]:
    # (midpoint between grid values i and i+1, whether a tie goes up): ties round to the even code
    return tuple(((E2M1_GRID[i] + E2M1_GRID[i + 1]) / 2, i % 2 == 1) for i in range(len(E2M1_GRID) - 1))


_THRESHOLDS = _thresholds()


def e2m1_encode(v: Tensor) -> Tensor:
    """fp32 values (already divided by their scale) -> e2m1 codes (uint8, 0..15): round to nearest
    even, saturating at +-6 (PTX `cvt.rn.satfinite.e2m1x2.f32`); the sign bit is kept (-0 is 8)."""
    a = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for t, up in _THRESHOLDS:  # count the thresholds passed: the magnitude's code 0..7
        code += (a >= t) if up else (a > t)
    return code | (torch.signbit(v).to(torch.uint8) << 3)


def pack_nibbles(codes: Tensor) -> Tensor:
    """codes [..., K] (uint8 0..15) -> bytes [..., K / 2]: column 2j in the low nibble, 2j+1 in the high."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """bytes [..., K / 2] -> codes [..., K] (the inverse of `pack_nibbles`)."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)


def _byte_table(device: torch.device) -> Tensor:
    # [256, 2]: the two values a byte holds (low nibble first), so decoding is one gather
    mags = torch.tensor(E2M1_GRID, dtype=torch.float32)
    values = torch.cat((mags, -mags))  # code 0..15
    b = torch.arange(256)
    return torch.stack((values[b & 0xF], values[b >> 4]), dim=-1).to(device)


def decode_packed(packed: Tensor) -> Tensor:
    """bytes [..., K / 2] -> fp32 values [..., K] on the e2m1 grid."""
    return _byte_table(packed.device)[packed.int()].reshape(*packed.shape[:-1], -1)


# ---------------------------------------------------------------- block scales and their layout


def swizzle_scales(scales: Tensor) -> Tensor:
    """Block scales [rows, kb] (row-major) -> the stored layout [round_up(rows, 128), round_up(kb, 4)].

    The padded matrix is cut into 128 x 4 tiles, tile (i, j) stored at offset (i * tiles_per_row + j)
    * 512; inside a tile, the scale of row r = 32 * a + b and column c sits at b * 16 + a * 4 + c
    (the cutlass / tcgen05 "scale factor" layout LightX2V's kernel writes); padding is zero."""
    rows, kb = scales.shape
    r_pad, k_pad = round_up(rows, TILE_ROWS), round_up(kb, TILE_COLS)
    raw = scales.view(torch.uint8) if scales.element_size() == 1 else scales
    padded = torch.zeros(r_pad, k_pad, dtype=raw.dtype, device=raw.device)
    padded[:rows, :kb] = raw
    # m = mt * 128 + a * 32 + b, k = kt * 4 + c  ->  [mt, kt, b, a, c]
    tiled = padded.view(r_pad // TILE_ROWS, 4, 32, k_pad // TILE_COLS, TILE_COLS).permute(0, 3, 2, 1, 4)
    out = tiled.reshape(r_pad, k_pad)
    return out.view(scales.dtype) if raw is not scales else out


def unswizzle_scales(stored: Tensor, rows: int, kb: int) -> Tensor:
    """The stored layout [round_up(rows, 128), round_up(kb, 4)] -> block scales [rows, kb]."""
    r_pad, k_pad = round_up(rows, TILE_ROWS), round_up(kb, TILE_COLS)
    if tuple(stored.shape) != (r_pad, k_pad):
        raise ValueError(f"NVFP4 block scales of a {rows} x {kb * BLOCK} matrix are stored as [{r_pad}, {k_pad}], "
                         f"got {list(stored.shape)}")
    raw = stored.view(torch.uint8) if stored.element_size() == 1 else stored
    tiled = raw.reshape(r_pad // TILE_ROWS, k_pad // TILE_COLS, 32, 4, TILE_COLS).permute(0, 3, 2, 1, 4)
    out = tiled.reshape(r_pad, k_pad)[:rows, :kb]
    return out.view(stored.dtype) if raw is not stored else out


# ---------------------------------------------------------------- one matrix


def global_scale(amax: Tensor) -> Tensor:
    """2688 / amax (fp32 []): the per-tensor scale that maps the largest block scale to 448."""
    return GLOBAL_SCALE_NUMERATOR / amax.float().clamp(min=_MIN_AMAX)


def quantize_blocks(x: Tensor, gs: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] (K a multiple of 16) with global scale gs [] -> (packed uint8 [M, K / 2], block
    scales float8_e4m3fn [M, K / 16] row-major), as LightX2V's `scaled_nvfp4_quant` computes them."""
    m, k = x.shape
    xb = x.float().reshape(m, k // BLOCK, BLOCK)
    bmax = xb.abs().amax(dim=-1)  # [M, K/16]
    gs = gs.float()
    sf = (gs * (bmax * (1.0 / E2M1_MAX))).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)  # saturating
    sf32 = sf.float()
    inv = torch.where(sf32 > 0, gs * (1.0 / sf32), torch.zeros_like(sf32))  # a zero block stays zero
    codes = e2m1_encode(xb * inv.unsqueeze(-1)).reshape(m, k)
    return pack_nibbles(codes), sf


def dequantize_blocks(packed: Tensor, scales: Tensor, gs: Tensor) -> Tensor:
    """(packed [M, K / 2], block scales [M, K / 16] row-major, gs []) -> fp32 [M, K] = q * s / gs."""
    m = packed.shape[0]
    q = decode_packed(packed).reshape(m, scales.shape[1], BLOCK)
    return (q * scales.float().unsqueeze(-1)).reshape(m, -1) / gs.float()


# ---------------------------------------------------------------- the schemes


class Nvfp4WeightOnly(QuantScheme):
    """`w4a16-nvfp4`: NVFP4 weights dequantized to the activation dtype before a float GEMM (any device)."""

    name = "w4a16-nvfp4"
    qdtype = torch.uint8
    storage = "nvfp4"
    file_leaves = ("weight", "weight_scale", "weight_global_scale", "input_global_scale", "alpha", "input_absmax")

    def check_shape(self, in_features: int, out_features: int) -> Optional[str]:
        if in_features % BLOCK:
            return f"NVFP4 scales blocks of {BLOCK} input features; in_features {in_features} is not a multiple of {BLOCK}"
        return None

    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        reason = self.check_shape(in_features, out_features)
        if reason is not None:
            raise ValueError(f"{self.name}: {reason}")
        return {
            "weight": TensorSpec((out_features, in_features // 2), torch.uint8),
            "weight_scale": TensorSpec(scale_layout_shape(out_features, in_features), torch.float8_e4m3fn),
            "weight_global_scale": TensorSpec((), torch.float32),
            # 0: no calibrated activation scale; w4a4 computes one per call
            "input_global_scale": TensorSpec((), torch.float32, default=0.0),
        }

    def logical_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, int]:
        return weight_shape[0], 2 * weight_shape[1]

    def quantize_tensors(self, weight: Tensor) -> dict[str, Tensor]:
        """A float weight [out, in] -> packed weight, swizzled block scales, global scale."""
        if weight.ndim != 2 or weight.shape[1] % BLOCK:
            raise ValueError(f"{self.name}: expected a 2-D weight [out, in] with in a multiple of {BLOCK}, "
                             f"got shape {tuple(weight.shape)}")
        w = weight.to(torch.bfloat16).float()  # as LightX2V's converter: the weight in bf16 ...
        gs = global_scale(w.abs().amax()).to(torch.bfloat16).float()  # ... and 2688 / amax in bf16
        packed, sf = quantize_blocks(w, gs)
        return {"weight": packed, "weight_scale": swizzle_scales(sf), "weight_global_scale": gs}

    def dequantize_tensors(self, tensors: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        packed = tensors["weight"]
        out, k = self.logical_shape(tuple(packed.shape))
        sf = unswizzle_scales(tensors["weight_scale"], out, k // BLOCK)
        return dequantize_blocks(packed, sf, tensors["weight_global_scale"]).to(dtype)

    def apply(self, layer, x: Tensor) -> Tensor:
        bias = layer.bias if layer.bias is None or layer.bias.dtype == x.dtype else layer.bias.to(x.dtype)
        return F.linear(x, self.dequantize_tensors(layer.quant_tensors(), x.dtype), bias)

    def from_file(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """LightX2V's tensors -> the layer's: `weight_global_scale` as stored, or 1 / (alpha *
        input_global_scale) where the file has those instead; `input_global_scale` as stored, or
        2688 / `input_absmax`, or 0 (none: computed per call)."""
        scalar = (lambda name: tensors[name].float().reshape(()))
        if "weight_global_scale" in tensors:
            wgs = scalar("weight_global_scale")
        else:
            wgs = 1.0 / (scalar("alpha") * scalar("input_global_scale"))
        if "input_global_scale" in tensors:
            igs = scalar("input_global_scale")
        elif "input_absmax" in tensors:
            igs = global_scale(scalar("input_absmax"))
        else:
            igs = torch.zeros(())
        return {"weight": tensors["weight"], "weight_scale": tensors["weight_scale"],
                "weight_global_scale": wgs, "input_global_scale": igs}

    # the one-scale interface does not describe four tensors: refuse it rather than guess
    def quantize(self, weight: Tensor):
        raise TypeError(f"{self.name} stores four tensors per layer: use quantize_tensors")

    def dequantize(self, qweight: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32):
        raise TypeError(f"{self.name} stores four tensors per layer: use dequantize_tensors")

    def forward(self, x, qweight, scale, bias):
        raise TypeError(f"{self.name} stores four tensors per layer: use apply(layer, x)")


class Nvfp4(Nvfp4WeightOnly):
    """`w4a4-nvfp4`: activations quantized to NVFP4 too (the reference compute; see the module docstring)."""

    name = "w4a4-nvfp4"

    def available(self, device: torch.device) -> Optional[str]:
        if device.type == "cpu":
            return None  # the reference compute
        if device.type != "cuda":
            return f"needs the CPU (reference) or a CUDA GPU, got {device.type}; use the weight-only w4a16-nvfp4"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 10:
            return (f"FP4 tensor cores need compute capability sm100+ (Blackwell); this GPU is sm{major}{minor}: "
                    "use the weight-only w4a16-nvfp4 (the same weights, dequantized before a bf16 GEMM)")
        return (f"lightx2v has no FP4 GEMM for sm{major}{minor} yet (the reference would be slower than bf16): "
                "use the weight-only w4a16-nvfp4")

    def apply(self, layer, x: Tensor) -> Tensor:
        # x: [..., K] -> [..., N]; quantized per 16 values along K with one global scale per call
        k = x.shape[-1]
        x2 = x.reshape(-1, k).float()
        igs = layer.input_global_scale.float()
        gs = torch.where(igs > 0, igs, global_scale(x2.abs().amax()))
        xq, xs = quantize_blocks(x2, gs)
        xd = dequantize_blocks(xq, xs, gs)  # [M, K] fp32
        w = self.dequantize_tensors(layer.quant_tensors(), torch.float32)  # [N, K]
        y = F.linear(xd, w, None if layer.bias is None else layer.bias.float())
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------- files


def file_scheme(module: str, infos: Mapping[str, tuple], where) -> str:
    """The scheme of a layer whose file weight is uint8, checked against LightX2V's nvfp4 layout
    (`infos`: official key -> (shape, dtype)); a CheckpointError naming what differs otherwise."""
    (wshape, _), scale = infos[f"{module}.weight"], infos.get(f"{module}.weight_scale")
    if len(wshape) != 2:
        raise CheckpointError(f"{where}: {module}.weight is uint8 of shape {list(wshape)}; "
                              "NVFP4 weights are [out, in / 2]")
    out, k = wshape[0], 2 * wshape[1]
    expected = scale_layout_shape(out, k)
    if scale is None or scale[1] != torch.float8_e4m3fn or k % BLOCK or tuple(scale[0]) != expected:
        got = "none" if scale is None else f"{str(scale[1]).replace('torch.', '')} {list(scale[0])}"
        raise CheckpointError(f"{where}: {module}.weight is packed uint8 [{out}, {k // 2}]; LightX2V's NVFP4 expects "
                              f"{module}.weight_scale float8_e4m3fn {list(expected)} (swizzled), got {got}")
    has = (lambda leaf: f"{module}.{leaf}" in infos)
    if not (has("weight_global_scale") or (has("input_global_scale") and has("alpha"))):
        other = " (weight_scale_2: the ModelOpt / ComfyUI NVFP4 layout, not read)" if has("weight_scale_2") else ""
        raise CheckpointError(f"{where}: {module} is NVFP4 without {module}.weight_global_scale (nor "
                              f"input_global_scale + alpha){other}")
    return "w4a4-nvfp4"
