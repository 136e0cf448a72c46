"""The layers of the Wan DiT (2.1 and 2.2): norms, 3D RoPE, attention, the transformer block, the head.

Design: parameter names follow the official Wan2.1 code (wan/modules/model.py), so a checkpoint
loads by name. Precision follows the official run (fp32 weights under bf16 autocast), written
out without autocast so that the weights can be stored in bf16:
- the residual stream `x` is float32; norms, modulation (shift/scale/gate) and RoPE are float32;
- activations are cast to a layer's compute dtype right before each Linear and before attention
  (`compute_dtype(layer)`: the layer's `compute_dtype` attribute if a transform set one, e.g. a
  quantized linear, else the dtype of its weight).
Attention goes through `module.attn_backend(q, k, v)` (see lightx2v.ops.attention), `[B, L, H, D]`.
The elementwise work around it (norm + modulation, q/k norm + RoPE, the gated residual adds) goes
through `module.fused_ops` (lightx2v.ops.fused: "torch", the reference and default, or "triton").
Self-attention runs q, k, v as one GEMM when the `fuse_qkv` transform (lightx2v.runtime.fuse) set
`qkv_weight` / `qkv_bias`, unless a forward hook (a dynamic LoRA) sits on q, k or v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.ops.attention import get_backend
from lightx2v.ops.fused import get_fused
from lightx2v.ops.table_cache import TableCache

CLIP_DIM = 1280  # width of the CLIP ViT-H/14 features of the Wan2.1 I2V releases (default image_dim)


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a layer wants its input in."""
    return getattr(layer, "compute_dtype", None) or layer.weight.dtype


def linear(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply `layer` to `x` cast to the layer's compute dtype."""
    return layer(x.to(compute_dtype(layer)))


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input / weight dtype; returns float32."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class RMSNormFP32(nn.Module):
    """RMSNorm over the last dim (the whole model width, across heads), in float32, with weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)


# ---------------------------------------------------------------- 3D RoPE


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to the (frame, height, width) axes, as the reference splits them."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_freqs(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> Tensor:
    """3D RoPE rotations for a (f, h, w) token grid: [f*h*w, 1, head_dim/2, 2] float32 (cos, sin).

    Angles are computed in float64 (theta 10000, positions 0..n-1 on each axis) like the
    reference's `rope_params`, then rounded once. The last dim is (real, imag), so
    `torch.view_as_complex` turns it into the reference's complex multipliers for free.
    """
    axes = []
    for n, d in zip(grid, rope_split(head_dim)):
        inv_freq = 1.0 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        axes.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv_freq))  # [n, d/2]
    f, h, w = grid
    angles = torch.cat(
        [
            axes[0][:, None, None, :].expand(f, h, w, -1),
            axes[1][None, :, None, :].expand(f, h, w, -1),
            axes[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, head_dim // 2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


class RopeCache(TableCache):
    """RoPE tables per (grid, device): named state of the DiT (DESIGN principle 8; lightx2v.ops.table_cache)."""

    def __init__(self, head_dim: int, max_entries: int = 8) -> None:
        super().__init__(max_entries)
        self.head_dim = head_dim

    def get(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        return super().get((*grid, str(device)), lambda: rope_freqs(grid, self.head_dim, device))


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of x: [B, L, H, D] by `freqs` [L, 1, D/2, 2]; float32 out.

    The reference's complex multiply, in complex64 (one kernel in eager; the reference uses
    complex128). Under torch.compile the same product is written in real arithmetic, because
    Inductor cannot generate code for complex ops: x * cos2 + swap(x) * sin2, with cos2 = (c, c) and
    sin2 = (-s, s) per pair and swap(x) each channel's pair partner -- plain pointwise index math
    that Inductor fuses with the RMSNorm before it at 2x the speed of rotating (re, im) and
    re-interleaving them with torch.stack (Wan-14B q and k: 0.58 vs 1.19 ms per block on an H200,
    benchmarks/qk_prep.py); the same products and sums, so the same numbers.
    """
    if torch.compiler.is_compiling():
        x = x.float()
        cos2 = freqs[..., 0:1].expand(*freqs.shape[:-1], 2).flatten(-2)  # [L, 1, D]: c0 c0 c1 c1 ...
        sin2 = torch.stack((-freqs[..., 1], freqs[..., 1]), dim=-1).flatten(-2)  # [L, 1, D]: -s0 s0 -s1 s1 ...
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # [B, L, H, D]: (im, re) per pair
        return x * cos2 + swapped * sin2
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    rotated = torch.view_as_complex(pairs.contiguous()) * torch.view_as_complex(freqs)
    return torch.view_as_real(rotated).flatten(-2)


# ---------------------------------------------------------------- attention


class _QKVO(nn.Module):
    """The projections shared by both attentions: q, k, v, o and RMS q/k norms over the whole width."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNormFP32(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNormFP32(dim, eps) if qk_norm else nn.Identity()
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend


class SelfAttention(_QKVO):
    """Self-attention with RMS q/k norm over the whole width and 3D RoPE (official WanSelfAttention)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__(dim, num_heads, qk_norm, eps)
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step
        # set by lightx2v.runtime.fuse.fuse_qkv: [3C, C] / [3C] tensors whose slices ARE q/k/v's weights
        # and biases (plain attributes, not in state_dict; q.weight etc. are views into them)
        self.qkv_weight: Tensor | None = None
        self.qkv_bias: Tensor | None = None
        self.qkv_params: tuple = ()  # the q, k, v weight Parameters that were fused (identity check)
        self.qkv_scale: Tensor | None = None  # quantized q/k/v: their per-channel scales, [3C, 1]

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() give q/k/v new storage (`param.data = ...`): the fused tensors would be stale
        self.qkv_weight, self.qkv_bias, self.qkv_params, self.qkv_scale = None, None, (), None
        return super()._apply(fn, recurse)

    def qkv_fused(self) -> bool:
        """The fused tensors are set and q, k, v still hold the weights fused (not a layer replaced since,
        e.g. quantized, or a weight assigned)."""
        p = self.qkv_params
        return (self.qkv_weight is not None and self.q.weight is p[0] and self.k.weight is p[1]
                and self.v.weight is p[2])

    def _project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # h: [B, L, C] -> q, k, v [B, L, C]: one GEMM when fused and nothing hooks q/k/v (a dynamic
        # LoRA added after fusing is a hook: it then runs through the layers, never silently skipped)
        if self.qkv_fused() and not _hooked(self.q, self.k, self.v):
            if self.qkv_scale is not None:  # quantized: the activations quantized once, one 8-bit GEMM
                q = self.q
                return q.scheme.forward(h.to(q.compute_dtype), self.qkv_weight, self.qkv_scale, self.qkv_bias,
                                        q.kernels).chunk(3, dim=-1)
            return F.linear(h, self.qkv_weight, self.qkv_bias).chunk(3, dim=-1)
        return self.q(h), self.k(h), self.v(h)

    def qkv(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, L, C] -> q, k (normed, rotated), v: each [B, L, H, D] in the compute dtype; token-wise,
        so a chunk of tokens with its rows of `rope` gives those tokens' rows."""
        dt = compute_dtype(self.q)
        q, k, v = self._project(x.to(dt))
        if isinstance(self.norm_q, RMSNormFP32) and isinstance(self.norm_k, RMSNormFP32):
            ops = self.fused_ops
            q = ops.qk_norm_rope(q, self.norm_q.weight, self.norm_q.eps, rope, self.num_heads, dt)  # [B, L, H, D]
            k = ops.qk_norm_rope(k, self.norm_k.weight, self.norm_k.eps, rope, self.num_heads, dt)
        else:
            q = apply_rope(self.norm_q(q).unflatten(-1, (self.num_heads, -1)), rope).to(dt)
            k = apply_rope(self.norm_k(k).unflatten(-1, (self.num_heads, -1)), rope).to(dt)
        return q, k, v.unflatten(-1, (self.num_heads, -1)).to(dt)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        # x: [B, L, C] -> [B, L, C] in the compute dtype of `o`
        out = self.attn_backend(*self.qkv(x, rope))  # [B, L, H, D]
        return linear(self.o, out.flatten(2))


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class CrossAttention(_QKVO):
    """Cross-attention to the text tokens; with `image_input`, also to the CLIP image tokens.

    The image branch (official WanI2VCrossAttention) attends the same queries over the image
    tokens with its own k_img / v_img / norm_k_img and adds the two results before `o`.
    """

    attn_role = "cross"  # its backend may differ from self-attention's (EngineConfig.attention)

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image_input: bool) -> None:
        super().__init__(dim, num_heads, qk_norm, eps)
        if image_input:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNormFP32(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, t: Tensor, dt: torch.dtype) -> Tensor:
        return t.unflatten(-1, (self.num_heads, -1)).to(dt)  # [B, L, C] -> [B, L, H, D]

    def context_kv(self, context: Tensor, context_img: Tensor | None = None) -> tuple[Tensor, ...]:
        """K and V of the text tokens (and of the image tokens): (k, v[, k_img, v_img]), each
        [B, Lc, H, D] in the compute dtype. They depend on the context only, not on x or the step,
        so a generation computes them once (WanModel.cross_kv, lightx2v.runtime.context_kv)."""
        dt = compute_dtype(self.q)
        kv = (self._heads(self.norm_k(linear(self.k, context)), dt), self._heads(linear(self.v, context), dt))
        if context_img is None:
            return kv
        return kv + (self._heads(self.norm_k_img(linear(self.k_img, context_img)), dt),
                     self._heads(linear(self.v_img, context_img), dt))

    def forward(self, x: Tensor, kv: tuple[Tensor, ...]) -> Tensor:
        # x: [B, L, C]; kv: `context_kv(...)`: text (k, v) [B, text_len, H, D], then the image's if any
        dt = compute_dtype(self.q)
        q = self._heads(self.norm_q(linear(self.q, x)), dt)
        out = self.attn_backend(q, kv[0], kv[1]).flatten(2)  # [B, L, C]
        if len(kv) == 4:
            # the reference adds the two branches in float32 (its attention returns q's fp32 dtype)
            out = out.float() + self.attn_backend(q, kv[2], kv[3]).flatten(2).float()
        return linear(self.o, out)


# ---------------------------------------------------------------- block and head


class WanBlock(nn.Module):
    """One DiT block: modulated self-attn, cross-attn (norm3), modulated FFN; fp32 residual."""

    # What phase offload reads (lightx2v.runtime.block_offload): the block's parts in the order forward
    # uses them, (phase, member names); every tensor of the block is in exactly one phase. The first
    # phase holds what forward reads before calling a submodule (`modulation`); a later phase is
    # needed from the first call of one of its modules on (the cross-attention K/V included).
    _offload_phases = (
        ("self_attn", ("modulation", "norm1", "self_attn")),
        ("cross_attn", ("norm3", "cross_attn")),
        ("ffn", ("norm2", "ffn")),
    )

    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool, eps: float,
        image_input: bool,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNormFP32(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        # official naming: norm3 is the (affine) norm before cross-attention, norm2 the one before the FFN
        self.norm3 = LayerNormFP32(dim, eps=eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps, image_input)
        self.norm2 = LayerNormFP32(dim, eps=eps, elementwise_affine=False)
        # official ffn.0 / ffn.2; ffn.1 (GELU tanh) is applied by fused_ops.linear_gelu with ffn.0
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    # tokens per chunk of the low-memory path (`_forward_chunked`, set by lightx2v.runtime.chunking); 0: off
    chunk_tokens: int = 0
    # the chunked path may write its output into its input x (set per call by WanModel.run_blocks: the
    # input is not read again by anyone), saving the new residual's fp32 copy
    chunk_in_place: bool = False

    def forward(self, x: Tensor, e: Tensor, kv: tuple[Tensor, ...], rope: Tensor) -> Tensor:
        # x: [B, L, C] fp32 residual; e: [B, 1 | L, 6, C] fp32 (time projection: one per sample, broadcast
        # over the tokens, or one per token); kv: this block's cross-attention K/V (CrossAttention.context_kv)
        if self.chunk_tokens and x.shape[1] > self.chunk_tokens and not torch.is_grad_enabled():
            return self._forward_chunked(x, e, kv, rope, self.chunk_tokens)
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.float() + e).unbind(2)  # [B, 1 | L, C]
        ops = self.fused_ops
        y = self.self_attn(ops.norm_modulate(x, shift, scale, self.norm1.eps, compute_dtype(self.self_attn.q)), rope)
        x = ops.gated_residual(x, y, gate)
        x = x + self.cross_attn(self.norm3(x).float(), kv).float()
        y = ops.linear_gelu(self.ffn[0], ops.norm_modulate(x, c_shift, c_scale, self.norm2.eps, compute_dtype(self.ffn[0])))
        return ops.gated_residual(x, self.ffn[2](y), c_gate)

    def _forward_chunked(self, x: Tensor, e: Tensor, kv: tuple[Tensor, ...], rope: Tensor, n: int) -> Tensor:
        """`forward` with every token-wise part run `n` tokens at a time (inference only).

        Only self-attention's softmax needs all the tokens at once: q, k, v are filled chunk by chunk
        (modulated norm, projection, q/k norm and RoPE of n tokens), attention runs once, and the output
        projection, the cross-attention and the FFN run per chunk, writing the residual in place: into
        one new fp32 tensor, or into `x` itself when `chunk_in_place` says nobody reads x again (a
        feature cache reads its stack's input after the blocks: WanModel.run_blocks decides). What is
        alive at the peak is x, q, k, v and the attention output (12 x dim bytes a token in bf16: at
        14B 60 KB) plus one chunk's temporaries, instead of the whole sequence's FFN hidden state and
        the norms' fp32 temporaries (~30 x dim). Same arithmetic per token as `forward`; a GEMM over
        fewer rows may round differently in the last bits."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.float() + e).unbind(2)  # [B, 1 | L, C]
        ops, attn = self.fused_ops, self.self_attn
        dt = compute_dtype(attn.q)
        B, L, C = x.shape
        spans = [(s, min(s + n, L)) for s in range(0, L, n)]

        def rows(t: Tensor, s: int, end: int) -> Tensor:  # a modulation per sample [B, 1, C] or per token [B, L, C]
            return t if t.shape[1] == 1 else t[:, s:end]

        q = k = v = None
        for s, end in spans:
            h = ops.norm_modulate(x[:, s:end], rows(shift, s, end), rows(scale, s, end), self.norm1.eps, dt)
            qs, ks, vs = attn.qkv(h, rope[s:end])
            if q is None:  # [B, L, H, D] each, filled chunk by chunk
                q, k, v = (t.new_empty((B, L, *t.shape[2:])) for t in (qs, ks, vs))
            q[:, s:end], k[:, s:end], v[:, s:end] = qs, ks, vs
            del h, qs, ks, vs
        out = attn.attn_backend(q, k, v)  # [B, L, H, D]
        del q, k, v
        new = x if self.chunk_in_place else torch.empty_like(x)
        for s, end in spans:
            y = linear(attn.o, out[:, s:end].flatten(2))
            new[:, s:end] = ops.gated_residual(x[:, s:end], y, rows(gate, s, end))
        del out, y
        for s, end in spans:  # cross-attention: the queries are token-wise
            xs = new[:, s:end]
            xs += self.cross_attn(self.norm3(xs).float(), kv).float()
        for s, end in spans:
            xs = new[:, s:end]
            y = ops.linear_gelu(self.ffn[0], ops.norm_modulate(xs, rows(c_shift, s, end), rows(c_scale, s, end),
                                                               self.norm2.eps, compute_dtype(self.ffn[0])))
            new[:, s:end] = ops.gated_residual(xs, self.ffn[2](y), rows(c_gate, s, end))
        return new


class Head(nn.Module):
    """Final modulated LayerNorm + Linear to `out_dim * prod(patch_size)` channels per token."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNormFP32(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.fused_ops = get_fused("torch")  # swapped by the engine's kernels step

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        # x: [B, L, C] fp32; e: [B, 1 | L, C] fp32 (time embedding, before the projection)
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)  # [B, 1 | L, C]
        return linear(self.head, self.fused_ops.norm_modulate(x, shift, scale, self.norm.eps, compute_dtype(self.head)))


class MLPProj(nn.Module):
    """CLIP image features -> image context tokens (official `img_emb`).

    proj = LayerNorm(image_dim), Linear(image_dim -> image_dim), GELU (exact), Linear(image_dim -> dim),
    LayerNorm(dim), both norms affine with torch's default eps 1e-5. `image_dim` is the width of the
    CLIP features (1280 for the ViT-H/14 of the Wan2.1 releases). FLF2V adds a learnt position
    embedding `emb_pos` [1, num_tokens, image_dim] over the first and last frames' tokens
    ([1, 514, 1280] in the releases: 257 tokens each).
    """

    def __init__(self, dim: int, num_tokens: int | None, image_dim: int = CLIP_DIM) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            LayerNormFP32(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(), nn.Linear(image_dim, dim),
            LayerNormFP32(dim),
        )
        if num_tokens is not None:
            self.emb_pos = nn.Parameter(torch.zeros(1, num_tokens, image_dim))

    def forward(self, clip_fea: Tensor) -> Tensor:
        # clip_fea: [B, n_img, image_dim] -> [B, n_img, dim] fp32
        if hasattr(self, "emb_pos"):
            clip_fea = clip_fea.float() + self.emb_pos.float()
        h = linear(self.proj[1], self.proj[0](clip_fea))
        h = linear(self.proj[3], self.proj[2](h))
        return self.proj[4](h)
