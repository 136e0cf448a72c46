"""The layers of the HunyuanVideo-1.5 DiT: embeddings, the text token refiner, the double-stream block, the head.

Design: parameter names are the official checkpoint's (tencent/HunyuanVideo-1.5,
hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py and its modules/), so a released
transformer loads by name. Precision follows the Wan DiT's rules (lightx2v.models.wan.dit_blocks):
the residual streams, norms, modulation and RoPE in float32; activations cast to a layer's compute
dtype right before each Linear and before attention (`linear`, `compute_dtype`, shared with Wan).
Attention goes through `module.attn_backend(q, k, v)` ([B, L, H, D], no mask: lightx2v.ops.attention);
the elementwise work of the double-stream blocks and the head (LayerNorm + modulation, the per-head q/k
RMSNorm + RoPE, the gated residuals) through `module.fused_ops` (lightx2v.ops.fused: "torch", the
reference and default, exactly the expressions written out before, or "triton"), as Wan's blocks;
an SSTA DiT's blocks also hand a backend that takes one their token layout (`joint_attention`).
The reference masks padding text tokens; here they are removed before the blocks (dit.py), and
`joint_attention` runs samples of unequal text lengths one at a time, so no mask is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.models.wan.dit_blocks import LayerNormFP32, RMSNormFP32, apply_rope, compute_dtype, linear
from lightx2v.ops.attention import get_backend
from lightx2v.ops.fused import get_fused
from lightx2v.ops.table_cache import TableCache

__all__ = ["LayerNormFP32", "RMSNormFP32", "compute_dtype", "linear"]

EPS = 1e-6  # the eps of every norm inside the blocks, the refiner and the head (the reference's)


# ---------------------------------------------------------------- time and RoPE


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """[cos | sin] sinusoidal embedding [B] -> [B, dim] in float32, as the reference computes it."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Official TimestepEmbedder: sinusoid(256) -> Linear -> SiLU -> Linear (`mlp.0`, `mlp.2`)."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden, bias=True), nn.SiLU(), nn.Linear(hidden, hidden, bias=True))

    def forward(self, t: Tensor) -> Tensor:
        # t: [B] -> [B, hidden] fp32
        h = linear(self.mlp[0], timestep_embedding(t, self.freq_dim))
        return linear(self.mlp[2], self.mlp[1](h)).float()


def rope_table(grid: tuple[int, int, int], dims: tuple[int, int, int], theta: float, device: torch.device) -> Tensor:
    """RoPE rotations of a (t, h, w) token grid: [t*h*w, 1, D/2, 2] float32 (cos, sin).

    Each axis gets `dims[i]` channels of a head (the reference's rope_dim_list), rotated in
    interleaved pairs (2j, 2j+1) by position * theta^(-2j/dims[i]); positions 0..n-1, token order
    frame-major as the patch embedding flattens."""
    parts = []
    for axis, (n, d) in enumerate(zip(grid, dims)):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device)[: d // 2] / d)
        ang = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)  # [n, d/2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        parts.append(ang.reshape(shape).expand(*grid, d // 2))
    angles = torch.cat(parts, dim=-1).reshape(math.prod(grid), 1, -1)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


class RopeCache(TableCache):
    """RoPE tables per (grid, device): named state of the DiT with `reset()` (DESIGN principle 8;
    lightx2v.ops.table_cache)."""

    def __init__(self, dims: tuple[int, int, int], theta: float, max_entries: int = 8) -> None:
        super().__init__(max_entries)
        self.dims, self.theta = dims, theta

    def get(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        return super().get((*grid, str(device)), lambda: rope_table(grid, self.dims, self.theta, device))


# ---------------------------------------------------------------- small modules


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (official MLP; the activation is not a parameter)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, ops=None) -> Tensor:
        # with a block's fused ops (lightx2v.ops.fused), a GELU(tanh) MLP takes their linear_gelu
        # (the GEMM's GELU epilogue under kernels="triton"; the same expression under "torch")
        if ops is not None and isinstance(self.act, nn.GELU) and self.act.approximate == "tanh":
            return linear(self.fc2, ops.linear_gelu(self.fc1, x.to(compute_dtype(self.fc1))))
        return linear(self.fc2, self.act(linear(self.fc1, x)))


class ModulateDiT(nn.Module):
    """SiLU -> Linear(hidden, factor * hidden): the modulation vectors of a block (`linear`)."""

    def __init__(self, hidden: int, factor: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, factor * hidden)

    def forward(self, vec: Tensor) -> Tensor:
        # vec: [B, C] fp32 -> [B, factor * C] fp32
        return linear(self.linear, F.silu(vec)).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # x: [B, L, C] fp32; shift, scale: [B, C] fp32
    return x * (1 + scale[:, None]) + shift[:, None]


def joint_attention(backend, q: Tensor, k: Tensor, v: Tensor, valid: list[int] | None, layout=None) -> Tensor:
    """Attention over [B, L, H, D] where sample b's keys are its first `valid[b]` tokens (the rest is
    text padding); None: all keys valid. Samples of unequal length run one at a time, so the backend
    never needs a mask; a padding token's query attends the sample's valid keys (its output is never
    read by the image tokens). `layout` (an SSTA DiT's lightx2v.ops.ssta.SSTALayout) goes to a backend
    that takes one (the "ssta" backend); there the padding queries are left out (their output: zeros)."""
    if layout is None or not getattr(backend, "takes_layout", False):
        if valid is None:
            return backend(q, k, v)
        return torch.cat([backend(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n]) for b, n in enumerate(valid)])
    if valid is None:
        return backend(q, k, v, layout=layout)
    return torch.cat([F.pad(backend(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], layout=layout),
                            (0, 0, 0, 0, 0, q.shape[1] - n)) for b, n in enumerate(valid)])


# ---------------------------------------------------------------- text token refiner (txt_in)


class IndividualTokenRefinerBlock(nn.Module):
    """A refiner block: gated self-attention (fused qkv) and gated MLP over the text tokens."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNormFP32(hidden, eps=EPS, elementwise_affine=True)
        self.self_attn_qkv = nn.Linear(hidden, 3 * hidden)
        self.self_attn_proj = nn.Linear(hidden, hidden)
        self.norm2 = LayerNormFP32(hidden, eps=EPS, elementwise_affine=True)
        self.mlp = MLP(hidden, int(hidden * mlp_ratio), nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # x: [1, Lt, C] fp32 (one sample's valid text tokens); c: [1, C] fp32 (time + pooled text)
        gate_msa, gate_mlp = linear(self.adaLN_modulation[1], self.adaLN_modulation[0](c)).float().chunk(2, dim=-1)
        qkv = linear(self.self_attn_qkv, self.norm1(x)).unflatten(-1, (3, self.heads, -1))  # [1, Lt, 3, H, D]
        q, k, v = qkv.unbind(2)
        attn = self.attn_backend(q, k, v).flatten(2)
        x = x + linear(self.self_attn_proj, attn).float() * gate_msa[:, None]
        return x + self.mlp(self.norm2(x)).float() * gate_mlp[:, None]


class TextProjection(nn.Module):
    """linear_1 -> SiLU -> linear_2: the pooled text to the refiner's conditioning (`c_embedder`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.linear_2, self.act_1(linear(self.linear_1, x))).float()


class SingleTokenRefiner(nn.Module):
    """Official `txt_in`: the Qwen2.5-VL states projected and refined, conditioned on t and their mean."""

    def __init__(self, dim: int, hidden: int, heads: int, depth: int) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(dim, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.c_embedder = TextProjection(dim, hidden)
        self.individual_token_refiner = nn.Module()
        self.individual_token_refiner.blocks = nn.ModuleList(
            IndividualTokenRefinerBlock(hidden, heads) for _ in range(depth))

    def forward(self, text: Tensor, t: Tensor) -> Tensor:
        # text: [1, Lt, dim] (one sample's valid tokens only: the reference's mask, applied by selection); t: [1]
        c = self.t_embedder(t) + self.c_embedder(text.float().mean(dim=1).to(text.dtype))
        x = linear(self.input_embedder, text).float()
        for block in self.individual_token_refiner.blocks:
            x = block(x, c)
        return x


class ByT5Mapper(nn.Module):
    """Official `byt5_in`: LayerNorm -> fc1 -> GELU -> fc2 -> GELU -> fc3 (glyph tokens to the width)."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.layernorm = LayerNormFP32(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(linear(self.fc1, self.layernorm(x)))
        return linear(self.fc3, F.gelu(linear(self.fc2, h))).float()


class VisionProjection(nn.Module):
    """Official `vision_in`: proj = LayerNorm, Linear, GELU, Linear, LayerNorm (SigLIP tokens to the width)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(LayerNormFP32(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, hidden),
                                  LayerNormFP32(hidden))

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj[2](linear(self.proj[1], self.proj[0](x)))
        return self.proj[4](linear(self.proj[3], h))


# ---------------------------------------------------------------- the double-stream block


class MMDoubleStreamBlock(nn.Module):
    """One double-stream block: image and text tokens, each with its own modulation, projections and
    MLP, attending jointly ([img, txt]); RoPE on the image tokens only. Both streams fp32."""

    # What phase offload reads (lightx2v.runtime.block_offload): the block's parts in forward order, every
    # tensor in exactly one. A later phase is brought by a forward pre-hook on its first module called:
    # img_attn_proj runs through `linear()` (no module call, no hook), so it belongs to the first phase;
    # img_mlp's call opens the second (the parameter-free img_norm2 is not called: its LayerNorm runs in
    # fused_ops.norm_modulate, which reads its eps only).
    _offload_phases = (
        ("attn", tuple(f"{s}_{m}" for s in ("img", "txt") for m in ("mod", "norm1", "attn_q", "attn_k", "attn_v",
                                                                     "attn_q_norm", "attn_k_norm")) + ("img_attn_proj",)),
        ("mlp", ("img_norm2", "img_mlp", "txt_attn_proj", "txt_norm2", "txt_mlp")),
    )

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, qk_norm: bool, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        head_dim = hidden // heads
        for s in ("img", "txt"):
            self.add_module(f"{s}_mod", ModulateDiT(hidden, 6))
            self.add_module(f"{s}_norm1", LayerNormFP32(hidden, eps=EPS, elementwise_affine=False))
            for p in ("q", "k", "v"):
                self.add_module(f"{s}_attn_{p}", nn.Linear(hidden, hidden, bias=qkv_bias))
            for p in ("q", "k"):
                self.add_module(f"{s}_attn_{p}_norm", RMSNormFP32(head_dim, EPS) if qk_norm else nn.Identity())
            self.add_module(f"{s}_attn_proj", nn.Linear(hidden, hidden, bias=qkv_bias))
            self.add_module(f"{s}_norm2", LayerNormFP32(hidden, eps=EPS, elementwise_affine=False))
            self.add_module(f"{s}_mlp", MLP(hidden, mlp_hidden, nn.GELU(approximate="tanh")))
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    # tokens per chunk of the image stream's token-wise parts (lightx2v.runtime.chunking); 0: off
    chunk_tokens: int = 0

    def _qkv(self, s: str, x: Tensor, shift: Tensor, scale: Tensor, rope: Tensor | None):
        # x: [B, L, C] fp32; shift, scale: [B, C] fp32; rope: [L, 1, D/2, 2] (None: the text stream, not
        # rotated) -> q, k, v [B, L, H, D] in the compute dtype
        ops, dt = self.fused_ops, compute_dtype(getattr(self, f"{s}_attn_q"))
        h = ops.norm_modulate(x, shift[:, None], scale[:, None], getattr(self, f"{s}_norm1").eps, dt)
        q, k, v = (getattr(self, f"{s}_attn_{p}")(h) for p in ("q", "k", "v"))  # [B, L, C] each
        qn, kn = getattr(self, f"{s}_attn_q_norm"), getattr(self, f"{s}_attn_k_norm")
        if isinstance(qn, RMSNormFP32) and isinstance(kn, RMSNormFP32):  # RMSNorm over each head's D channels
            q = ops.qk_norm_rope(q, qn.weight, qn.eps, rope, self.heads, dt, per_head=True)
            k = ops.qk_norm_rope(k, kn.weight, kn.eps, rope, self.heads, dt, per_head=True)
        else:  # qk_norm False: no norm, RoPE only
            q, k = (t.unflatten(-1, (self.heads, -1)) for t in (q, k))
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
            q, k = q.to(dt), k.to(dt)
        return q, k, v.unflatten(-1, (self.heads, -1)).to(dt)

    def _mlp(self, s: str, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        # the gated residuals of one stream: attention output, then the modulated MLP
        # x: [B, L, C] fp32; attn: [B, L, C] (the attention's output, before the projection)
        _, _, gate, shift2, scale2, gate2 = mod
        ops, mlp = self.fused_ops, getattr(self, f"{s}_mlp")
        x = ops.gated_residual(x, linear(getattr(self, f"{s}_attn_proj"), attn), gate[:, None])
        h = ops.norm_modulate(x, shift2[:, None], scale2[:, None], getattr(self, f"{s}_norm2").eps,
                              compute_dtype(mlp.fc1))
        return ops.gated_residual(x, mlp(h, ops), gate2[:, None])

    def _img_chunked(self, img: Tensor, mod: tuple[Tensor, ...], rope: Tensor, n: int, attn: Tensor | None = None):
        """The image stream's token-wise work `n` tokens at a time (chunk_tokens; inference only): without
        `attn`, q, k, v [B, Li, H, D] filled chunk by chunk (modulated norm, projection, q/k norm, RoPE);
        with it, the gated residuals (output projection, modulated norm, MLP) into a new [B, Li, C]. Only the
        joint attention sees every token at once; the MLP's hidden state is one chunk's. Same arithmetic per
        token as `forward` (a GEMM over fewer rows may round differently in its last bits)."""
        B, L, _ = img.shape
        out = None
        for s in range(0, L, n):
            e = min(s + n, L)
            if attn is not None:
                y = self._mlp("img", img[:, s:e], attn[:, s:e], mod)
                out = torch.empty_like(img) if out is None else out
                out[:, s:e] = y
                continue
            part = self._qkv("img", img[:, s:e], mod[0], mod[1], rope[s:e])
            out = out or tuple(t.new_empty((B, L, *t.shape[2:])) for t in part)
            for whole, t in zip(out, part):
                whole[:, s:e] = t
        return out

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, rope: Tensor,
                txt_valid: list[int] | None, layout=None) -> tuple[Tensor, Tensor]:
        # img: [B, Li, C], txt: [B, Lt, C] fp32; vec: [B, C] fp32; rope: [Li, 1, D/2, 2];
        # txt_valid: valid text tokens per sample (None: all); layout: SSTA's (None: dense attention)
        img_mod = self.img_mod(vec).chunk(6, dim=-1)
        txt_mod = self.txt_mod(vec).chunk(6, dim=-1)
        li, n = img.shape[1], self.chunk_tokens
        chunked = bool(n) and li > n and not torch.is_grad_enabled()
        if chunked:
            iq, ik, iv = self._img_chunked(img, img_mod, rope, n)
        else:
            iq, ik, iv = self._qkv("img", img, img_mod[0], img_mod[1], rope)
        tq, tk, tv = self._qkv("txt", txt, txt_mod[0], txt_mod[1], None)
        valid = None if txt_valid is None else [li + n for n in txt_valid]
        attn = joint_attention(self.attn_backend, torch.cat([iq, tq], 1), torch.cat([ik, tk], 1),
                               torch.cat([iv, tv], 1), valid, layout).flatten(2)  # [B, Li + Lt, C]
        del iq, ik, iv, tq, tk, tv
        if chunked:
            img = self._img_chunked(img, img_mod, rope, n, attn[:, :li])
        else:
            img = self._mlp("img", img, attn[:, :li], img_mod)
        txt = self._mlp("txt", txt, attn[:, li:], txt_mod)
        return img, txt


class FinalLayer(nn.Module):
    """Official `final_layer`: modulated LayerNorm (shift, scale) + Linear to patch * out channels."""

    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = LayerNormFP32(hidden, eps=EPS, elementwise_affine=False)
        self.linear = nn.Linear(hidden, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        # x: [B, L, C] fp32; vec: [B, C] fp32 -> [B, L, out_features]
        shift, scale = linear(self.adaLN_modulation[1], self.adaLN_modulation[0](vec)).float().chunk(2, dim=-1)
        h = self.fused_ops.norm_modulate(x, shift[:, None], scale[:, None], self.norm_final.eps, compute_dtype(self.linear))
        return linear(self.linear, h)
