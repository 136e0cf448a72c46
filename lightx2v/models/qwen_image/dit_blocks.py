"""The layers of the Qwen-Image MMDiT: the 3D RoPE over text and image, the joint attention, the
dual-stream block, the time embedding and the output norm.

Design: module and parameter names are those of the released diffusers checkpoints
(`transformer_blocks.{i}.attn.to_q`, `img_mod.1`, `img_mlp.net.0.proj` ...), so a checkpoint loads
by name. Each block keeps two residual streams, image and text, with their own modulation, norms,
projections and MLPs; they meet in one attention over the [text, image] sequence.

Precision: the residual streams, norms, modulation (shift / scale / gate) and RoPE are float32;
activations are cast to a layer's compute dtype right before each Linear and attention (as the
Wan DiT, lightx2v.models.wan.dit_blocks, whose helpers are shared). diffusers runs everything in
the storage dtype (bf16 streams); in fp32 the two agree to rounding, in bf16 ours keeps more bits.
The modulation linears (img_mod / txt_mod: 6 x 3072 x 3072 each, a third of the 20B weights) stay
in the compute dtype: unlike Wan's small modulation tables they are too big to keep in fp32.

RoPE (diffusers' QwenEmbedRope with scale_rope=True): channel pairs (2i, 2i+1) of each head are
rotated, the head's channels split over (frame, height, width) by `axes_dims_rope`. Image segment k
(0: the noisy image; 1..: the edit models' condition images, concatenated along the sequence) has
frame positions k .. k+f-1, and height / width positions centred on 0 (-(h - h//2) .. h//2 - 1).
Text token j has position m + j on all three axes, m = max over segments of max(h//2, w//2).
Angles are float32 products as the reference computes them (theta 10000).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.models.wan.dit_blocks import RMSNormFP32, apply_rope, compute_dtype, linear
from lightx2v.ops.attention import get_backend
from lightx2v.ops.fused import get_fused
from lightx2v.ops.table_cache import TableCache

EPS = 1e-6  # every norm of the model (diffusers' defaults for this class)
ROPE_THETA = 10000.0
TIME_FREQ_DIM = 256  # sinusoidal timestep channels (diffusers' Timesteps(256, flip_sin_to_cos=True))

Segments = tuple[tuple[int, int, int], ...]


# ---------------------------------------------------------------- 3D RoPE over text and image


def _axis_angles(pos: Tensor, dim: int) -> Tensor:
    """pos: [n] integer positions -> [n, dim/2] float32 angles, as the reference's `rope_params`."""
    inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2, device=pos.device).float() / dim)
    return torch.outer(pos.float(), inv_freq)


def rope_tables(segments: Segments, txt_len: int, axes: Sequence[int], device: torch.device) -> Tensor:
    """RoPE rotations for the joint [text, image] sequence: [txt_len + sum f*h*w, 1, head_dim/2, 2]
    float32 (cos, sin), text tokens first (the attention's order)."""
    parts, start = [], 0
    for k, (f, h, w) in enumerate(segments):
        pf = torch.arange(k, k + f, device=device)
        ph = torch.arange(h, device=device) - (h - h // 2)
        pw = torch.arange(w, device=device) - (w - w // 2)
        af, ah, aw = _axis_angles(pf, axes[0]), _axis_angles(ph, axes[1]), _axis_angles(pw, axes[2])
        grid = torch.cat([af[:, None, None].expand(f, h, w, -1), ah[None, :, None].expand(f, h, w, -1),
                          aw[None, None, :].expand(f, h, w, -1)], dim=-1)
        parts.append(grid.reshape(f * h * w, -1))
        start = max(start, h // 2, w // 2)
    pt = torch.arange(start, start + txt_len, device=device)
    txt = torch.cat([_axis_angles(pt, d) for d in axes], dim=-1)  # [txt_len, head_dim/2]
    angles = torch.cat([txt, *parts])[:, None]  # [L, 1, head_dim/2]
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


class RopeCache(TableCache):
    """RoPE tables per (segments, text length, device): named state of the DiT (DESIGN principle 8;
    lightx2v.ops.table_cache)."""

    def __init__(self, axes: Sequence[int], max_entries: int = 8) -> None:
        super().__init__(max_entries)
        self.axes = tuple(axes)

    def get(self, segments: Segments, txt_len: int, device: torch.device) -> Tensor:
        return super().get((segments, txt_len, str(device)), lambda: rope_tables(segments, txt_len, self.axes, device))


# ---------------------------------------------------------------- time embedding and output norm


class TimestepEmbedder(nn.Module):
    """sinusoidal [cos | sin] (256) -> linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIME_FREQ_DIM, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, sigma: Tensor) -> Tensor:
        # sigma: [N] fp32 in [0, 1] (the reference's timestep / 1000) -> [N, dim] fp32
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        angles = (sigma[:, None].float() * freqs[None]) * 1000.0  # the reference's product order
        s = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return linear(self.linear_2, F.silu(linear(self.linear_1, s))).float()


class TimeTextEmbed(nn.Module):
    """Holds `timestep_embedder` under the released name `time_text_embed` (no text input: the name is
    diffusers')."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class AdaNormOut(nn.Module):
    """Final LayerNorm (no affine) modulated by the time embedding: `linear` gives (scale, shift), in
    that order (diffusers' AdaLayerNormContinuous)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    def forward(self, x: Tensor, e: Tensor, out_dtype: torch.dtype) -> Tensor:
        # x: [B, L, C] fp32; e: [B, C] fp32 -> [B, L, C] out_dtype
        scale, shift = linear(self.linear, F.silu(e)).float()[:, None].chunk(2, dim=-1)  # [B, 1, C] each
        return self.fused_ops.norm_modulate(x, shift, scale, EPS, out_dtype)


# ---------------------------------------------------------------- joint attention


class JointAttention(nn.Module):
    """One attention over [text, image]: each stream has its own q/k/v projections, per-head RMS q/k
    norms and output projection (image: to_q ... to_out.0; text: add_q_proj ... to_add_out)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.add_q_proj, self.add_k_proj, self.add_v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_add_out = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNormFP32(head_dim, EPS), RMSNormFP32(head_dim, EPS)
        self.norm_added_q, self.norm_added_k = RMSNormFP32(head_dim, EPS), RMSNormFP32(head_dim, EPS)
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend

    def _heads(self, layer: nn.Module, x: Tensor) -> Tensor:
        return linear(layer, x).unflatten(-1, (self.num_heads, -1))  # [B, L, C] -> [B, L, H, D]

    def forward(self, img: Tensor, txt: Tensor, rope: Tensor) -> tuple[Tensor, Tensor]:
        # img: [B, Li, C], txt: [B, Lt, C] (modulated, compute dtype); rope: [Lt + Li, 1, D/2, 2]
        # -> (img [B, Li, C], txt [B, Lt, C]) in the output projections' dtypes
        dt = compute_dtype(self.to_q)
        q = torch.cat([self.norm_added_q(self._heads(self.add_q_proj, txt)), self.norm_q(self._heads(self.to_q, img))], 1)
        k = torch.cat([self.norm_added_k(self._heads(self.add_k_proj, txt)), self.norm_k(self._heads(self.to_k, img))], 1)
        v = torch.cat([self._heads(self.add_v_proj, txt).to(dt), self._heads(self.to_v, img).to(dt)], 1)
        q, k = apply_rope(q, rope).to(dt), apply_rope(k, rope).to(dt)  # [B, Lt + Li, H, D]
        out = self.attn_backend(q, k, v).flatten(2)  # [B, Lt + Li, C]
        lt = txt.shape[1]
        return linear(self.to_out[0], out[:, lt:]), linear(self.to_add_out, out[:, :lt])


# ---------------------------------------------------------------- the dual-stream block


class FeedForward(nn.Module):
    """Linear -> GELU (tanh) -> Linear, under diffusers' names: net.0.proj and net.2 (net.1, a
    dropout in diffusers, holds nothing)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, hidden)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor, ops=None) -> Tensor:
        # x: [B, L, C] in the compute dtype -> [B, L, C] in net.2's dtype; with a block's fused ops
        # (lightx2v.ops.fused), their linear_gelu: the GEMM's GELU epilogue under kernels="triton"
        proj = self.net[0].proj
        h = (ops.linear_gelu(proj, x.to(compute_dtype(proj))) if ops is not None
             else F.gelu(linear(proj, x), approximate="tanh"))
        return linear(self.net[2], h)


def _per_segment(fn: Callable[..., Tensor], split: int, x: Tensor, *params: Tensor) -> Tensor:
    """fn(x, *params) with params [B, S, C]: S = 1, one set for every token; S = 2 (zero_cond_t), the
    first set on tokens [0, split) (the noisy image), the second on the rest (the condition images).
    Two slices instead of diffusers' per-token [B, L, C] tables (L x C floats per parameter)."""
    if params[0].shape[1] == 1 or split >= x.shape[1]:
        return fn(x, *(p[:, :1] for p in params))
    if split <= 0:  # a chunk past the split (chunk_tokens): the second set only
        return fn(x, *(p[:, 1:2] for p in params))
    return torch.cat([fn(x[:, :split], *(p[:, :1] for p in params)),
                      fn(x[:, split:], *(p[:, 1:2] for p in params))], dim=1)


class QwenImageBlock(nn.Module):
    """One dual-stream block: per stream, modulated norm -> (joint attention) -> gated residual ->
    modulated norm -> MLP -> gated residual. The norms have no parameters (LayerNorm, eps 1e-6)."""

    # What phase offload reads (lightx2v.runtime.block_offload): the block's parts in forward order;
    # every tensor is in exactly one phase
    _offload_phases = (
        ("attn", ("img_mod", "txt_mod", "attn")),
        ("mlp", ("img_mlp", "txt_mlp")),
    )

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = JointAttention(dim, num_heads)
        self.img_mlp = FeedForward(dim, 4 * dim)
        self.txt_mlp = FeedForward(dim, 4 * dim)
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    # tokens per chunk of the image stream's MLP stage (lightx2v.runtime.chunking); 0: off
    chunk_tokens: int = 0

    def _img_mlp(self, x: Tensor, p: tuple[Tensor, ...], split: int, modulate, gated) -> Tensor:
        """The image stream's second half: x + MLP(modulated norm(x)) * gate, with chunk_tokens `n` tokens at
        a time into a new [B, Li, C] (inference only): the MLP's 4 x C hidden state is one chunk's, not the
        sequence's (attention, with its projections, still sees every token). Same arithmetic per token (a
        GEMM over fewer rows may round differently in its last bits)."""
        n, L = self.chunk_tokens, x.shape[1]
        dt = compute_dtype(self.img_mlp.net[0].proj)
        if not n or L <= n or torch.is_grad_enabled():
            return _residual(gated, split, x, self.img_mlp(_per_segment(modulate(dt), split, x, p[3], p[4]),
                                                           self.fused_ops), p[5])
        out = torch.empty_like(x)
        for s in range(0, L, n):
            xs, at = x[:, s:s + n], split - s  # the segment split, as seen from this chunk
            out[:, s:s + n] = _residual(gated, at, xs, self.img_mlp(_per_segment(modulate(dt), at, xs, p[3], p[4]),
                                                                    self.fused_ops), p[5])
        return out

    def forward(self, x: Tensor, txt: Tensor, e0: Tensor, rope: Tensor, split: int) -> tuple[Tensor, Tensor]:
        # x: [B, Li, C] fp32 image stream; txt: [B, Lt, C] fp32 text stream; e0: [B, S, C] fp32 time
        # embeddings (S = 2 with zero_cond_t: the step's, then timestep 0's for tokens >= split);
        # rope: [Lt + Li, 1, D/2, 2]. Returns both streams, fp32.
        ops = self.fused_ops
        img_p = linear(self.img_mod[1], F.silu(e0)).float().chunk(6, dim=-1)  # 6 x [B, S, C]
        txt_p = linear(self.txt_mod[1], F.silu(e0[:, :1])).float().chunk(6, dim=-1)  # 6 x [B, 1, C]
        dt_a = compute_dtype(self.attn.to_q)
        dt_ta, dt_tm = compute_dtype(self.attn.add_q_proj), compute_dtype(self.txt_mlp.net[0].proj)

        def modulate(dt: torch.dtype) -> Callable[..., Tensor]:
            return lambda h, shift, scale: ops.norm_modulate(h, shift, scale, EPS, dt)

        def gated(h: Tensor, y: Tensor, gate: Tensor) -> Tensor:  # y rides along h's slices
            return ops.gated_residual(h, y, gate)

        img_a, txt_a = self.attn(_per_segment(modulate(dt_a), split, x, img_p[0], img_p[1]),
                                 ops.norm_modulate(txt, txt_p[0], txt_p[1], EPS, dt_ta), rope)
        x = _residual(gated, split, x, img_a, img_p[2])
        txt = ops.gated_residual(txt, txt_a, txt_p[2])
        x = self._img_mlp(x, img_p, split, modulate, gated)
        txt = ops.gated_residual(txt, self.txt_mlp(ops.norm_modulate(txt, txt_p[3], txt_p[4], EPS, dt_tm), ops), txt_p[5])
        return x, txt


def _residual(fn: Callable[..., Tensor], split: int, x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x + y * gate per segment (as `_per_segment`, y sliced with x)."""
    if gate.shape[1] == 1 or split >= x.shape[1]:
        return fn(x, y, gate[:, :1])
    if split <= 0:  # a chunk past the split (chunk_tokens)
        return fn(x, y, gate[:, 1:2])
    return torch.cat([fn(x[:, :split], y[:, :split], gate[:, :1]), fn(x[:, split:], y[:, split:], gate[:, 1:2])], 1)
