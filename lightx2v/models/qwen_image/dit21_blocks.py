"""The layers of the Qwen-Image-2.1 DiT: one stream, block-causal attention, one shared modulation.

Design: module and parameter names are those of the released diffusers checkpoint
(`QwenImage21Transformer2DModel`: `transformer_blocks.{i}.attn.to_q`, `img_mlp.gate_layer`,
`txt_in.text_norm.weight`, `modulation.1.weight` ...), so transformer/ loads by name. No layer has a
bias. Unlike Qwen-Image's dual-stream MMDiT (dit_blocks.py) text and image tokens share every layer:
the sequence is [text with the condition images' latents in the encoder's image slots, target image].

Attention is block-causal: token q sees token k when q >= k, or when both are in the same image
(each image is bidirectional inside). Text and condition images come before the target image, so
they never see it: their activations do not depend on the noisy latents, and (`causal_condition`:
they are modulated by the embedding of t = 0) not on the step either. The model therefore runs the
prefix once (`Block21.prefill`, per segment: a text run causal over itself and seeing all before it,
an image seeing all before it and itself) and each step runs the target tokens only, attending to
the prefix's K/V and their own (`Block21.forward`: full attention, the hot path, through the
attention dispatch point).

Precision: residual streams, norms, modulation and RoPE in float32; activations cast to a layer's
compute dtype right before it (the family's convention, lightx2v.models.wan.dit_blocks helpers).

RoPE (diffusers' QwenImage21Rope): three axes (frame, height, width), channel pairs (2i, 2i+1). Text
tokens advance one position on all three axes; an image block holds the frame axis at the position
the text before it reached and lays out height / width centred on 0 (-(h - h//2) .. h//2 - 1), then
the position advances by max(h, w).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.models.wan.dit_blocks import RMSNormFP32, apply_rope, compute_dtype, linear
from lightx2v.ops.attention import get_backend

ROPE_THETA = 10000.0
TIME_FREQ_DIM = 256
SLOT_TOKENS = 4  # one image slot of the text encoder stands for 2 x 2 latent tokens

# a prefix segment: (start, end, is_text) over the joint sequence
Segment = tuple[int, int, bool]


# ---------------------------------------------------------------- positions and RoPE


def joint_positions(is_image: Sequence[bool], shapes: Sequence[Sequence[int]]) -> Tensor:
    """Positions [3, L] (frame, height, width) of the joint sequence; `is_image` [L] marks image tokens,
    `shapes` the (frames, height, width) token grid of each image in order (the target last)."""
    frame: list[int] = []
    img_h: list[int] = []
    img_w: list[int] = []
    cursor = position = 0
    flags = list(is_image)
    for _, h, w in shapes:
        start = flags.index(True, cursor)
        frame.extend(range(position, position + start - cursor))
        position += start - cursor
        cursor = start + h * w
        frame.extend([position] * (h * w))
        position += max(h, w)
        img_h.extend(y for y in range(-(h - h // 2), h // 2) for _ in range(w))
        img_w.extend(x for _ in range(h) for x in range(-(w - w // 2), w // 2))
    frame.extend(range(position, position + len(flags) - cursor))
    pos = torch.tensor(frame, dtype=torch.long).expand(3, -1).clone()
    mask = torch.tensor(flags, dtype=torch.bool)
    pos[1, mask] = torch.tensor(img_h, dtype=torch.long)
    pos[2, mask] = torch.tensor(img_w, dtype=torch.long)
    return pos


def rope_from_positions(pos: Tensor, axes: Sequence[int], device: torch.device) -> Tensor:
    """pos [3, L] -> [L, 1, head_dim/2, 2] float32 (cos, sin) as apply_rope takes them."""
    parts = []
    for p, dim in zip(pos, axes):
        inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2).to(torch.float32).div(dim))
        parts.append(torch.outer(p.float(), inv_freq))
    angles = torch.cat(parts, dim=-1)[:, None].to(device)  # [L, 1, D/2]
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def prefix_segments(is_image: Sequence[bool], shapes: Sequence[Sequence[int]], prefix_len: int) -> list[Segment]:
    """Runs of the prefix [0, prefix_len): text runs and image blocks. Images are told apart by their
    token counts (two condition images side by side are two blocks, as the reference counts them)."""
    flags = list(is_image[:prefix_len])
    lengths = [math.prod(s) for s in shapes]
    out: list[Segment] = []
    i, k = 0, 0
    while i < prefix_len:
        if flags[i]:
            out.append((i, i + lengths[k], False))
            i, k = i + lengths[k], k + 1
        else:
            j = i
            while j < prefix_len and not flags[j]:
                j += 1
            out.append((i, j, True))
            i = j
    return out


# ---------------------------------------------------------------- embeddings and head


class TimestepEmbedder(nn.Module):
    """[cos | sin] of 1000 t (256 channels) -> linear_1 -> SiLU -> linear_2, no biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIME_FREQ_DIM, dim, bias=False)
        self.linear_2 = nn.Linear(dim, dim, bias=False)

    def forward(self, sigma: Tensor) -> Tensor:
        # sigma: [N] fp32 (t / 1000, rounded to the compute dtype as the reference) -> [N, dim] fp32
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        angles = (1000.0 * sigma.float())[:, None] * freqs[None]  # the reference's product order
        s = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return linear(self.linear_2, F.silu(linear(self.linear_1, s))).float()


class TimeTextEmbed(nn.Module):
    """Holds `timestep_embedder` under the released name `time_text_embed`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class ZeroCenterRMSNorm(nn.Module):
    """RMSNorm whose stored weight is scale - 1 (the checkpoint's convention), in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (self.weight.float() + 1)


class TextProjection(nn.Module):
    """txt_in: zero-centred RMSNorm -> in_layer -> GELU (tanh) -> out_layer."""

    def __init__(self, context_dim: int, dim: int, eps: float) -> None:
        super().__init__()
        self.text_norm = ZeroCenterRMSNorm(context_dim, eps)
        self.in_layer = nn.Linear(context_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, Lt, context_dim] -> [B, Lt, dim] fp32
        return linear(self.out_layer, F.gelu(linear(self.in_layer, self.text_norm(x)), approximate="tanh")).float()


class ScaleNormOut(nn.Module):
    """The head's norm: LayerNorm (no affine) x (1 + scale), scale = linear(SiLU(e)); no shift."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        # x: [B, L, C] fp32; e: [B, C] fp32 -> [B, L, C] fp32
        scale = linear(self.linear, F.silu(e)).float()[:, None]
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps) * (1 + scale)


# ---------------------------------------------------------------- the block


class Attention21(nn.Module):
    """q, k, v, out projections (no bias) and per-head RMS q / k norms (diffusers' names)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        self.norm_q, self.norm_k = RMSNormFP32(head_dim, eps), RMSNormFP32(head_dim, eps)
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend

    def qkv(self, h: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # h: [B, L, C] modulated; rope [L, 1, D/2, 2] -> q, k, v [B, L, H, D] in the compute dtype
        dt = compute_dtype(self.to_q)
        q = self.norm_q(linear(self.to_q, h).unflatten(-1, (self.num_heads, -1)))
        k = self.norm_k(linear(self.to_k, h).unflatten(-1, (self.num_heads, -1)))
        v = linear(self.to_v, h).unflatten(-1, (self.num_heads, -1)).to(dt)
        return apply_rope(q, rope).to(dt), apply_rope(k, rope).to(dt), v


def _segment_attention(q: Tensor, k: Tensor, v: Tensor, segments: Sequence[Segment]) -> Tensor:
    """The block-causal attention of the prefix, one SDPA call per segment: q, k, v [B, L, H, D] ->
    [B, L, H, D]. Each segment sees the keys [0, end); a text segment causally over its own."""
    out = []
    for start, end, is_text in segments:
        mask = None
        if is_text:
            n = end - start
            mask = torch.cat([torch.ones(n, start, dtype=torch.bool, device=q.device),
                              torch.ones(n, n, dtype=torch.bool, device=q.device).tril()], dim=1)
        o = F.scaled_dot_product_attention(q[:, start:end].transpose(1, 2), k[:, :end].transpose(1, 2),
                                           v[:, :end].transpose(1, 2), attn_mask=mask)
        out.append(o.transpose(1, 2))
    return torch.cat(out, dim=1)


class SwiGLU(nn.Module):
    """out(SiLU(gate_layer(x)) * proj(x)), no biases (diffusers' names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)
        self.gate_layer = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.out, F.silu(linear(self.gate_layer, x)) * linear(self.proj, x))


class Block21(nn.Module):
    """Modulated LayerNorm -> attention -> tanh-gated residual -> modulated LayerNorm -> SwiGLU ->
    tanh-gated residual. `mod` is the model's shared modulation [B, 1, 4C] (scale1, gate1, scale2,
    gate2): every block reads the same one; the norms have no parameters (eps from the config)."""

    _offload_phases = (("attn", ("attn",)), ("mlp", ("img_mlp",)))

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.attn = Attention21(dim, num_heads, eps)
        self.img_mlp = SwiGLU(dim, dim * mlp_ratio)

    def _norm(self, x: Tensor, scale: Tensor, like: nn.Module) -> Tensor:
        return (F.layer_norm(x, (x.shape[-1],), eps=self.eps) * (1 + scale)).to(compute_dtype(like))

    def _mlp(self, x: Tensor, scale: Tensor, gate: Tensor) -> Tensor:
        return x + gate.tanh() * self.img_mlp(self._norm(x, scale, self.img_mlp.proj)).float()

    def prefill(self, x: Tensor, mod: Tensor, rope: Tensor, segments: Sequence[Segment]) -> tuple[Tensor, Tensor, Tensor]:
        """The prefix: x [B, Lp, C] fp32, mod [B|1, 1, 4C] (t = 0's) -> (x out, k, v [B, Lp, H, D])."""
        s1, g1, s2, g2 = mod.chunk(4, dim=-1)
        q, k, v = self.attn.qkv(self._norm(x, s1, self.attn.to_q), rope)
        a = _segment_attention(q, k, v, segments).flatten(2)
        x = x + g1.tanh() * linear(self.attn.to_out[0], a).float()
        return self._mlp(x, s2, g2), k, v

    def forward(self, x: Tensor, mod: Tensor, rope: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """The target tokens: x [B, L, C] fp32, mod [B, 1, 4C] (the step's), rope [L, 1, D/2, 2], kv the
        prefix's K/V of this block [B, Lp, H, D] -> x out [B, L, C] fp32."""
        s1, g1, s2, g2 = mod.chunk(4, dim=-1)
        q, k, v = self.attn.qkv(self._norm(x, s1, self.attn.to_q), rope)
        kp, vp = kv
        a = self.attn.attn_backend(q, torch.cat([kp.expand(q.shape[0], -1, -1, -1), k], 1),
                                   torch.cat([vp.expand(q.shape[0], -1, -1, -1), v], 1)).flatten(2)
        x = x + g1.tanh() * linear(self.attn.to_out[0], a).float()
        return self._mlp(x, s2, g2)
