"""The Wan diffusion transformer (DiT): Wan2.1 T2V, I2V and FLF2V, Wan2.2 T2V / I2V-A14B and TI2V-5B
as configurations of one module.

Design: `WanModel` reproduces the official `WanModel` (Wan-Video/Wan2.1 and Wan2.2,
wan/modules/model.py) with the official parameter names, so the official checkpoint loads by name
and a diffusers checkpoint through `dit_key_from_diffusers`. It is built on the meta device and filled by
`lightx2v.loading.state_dict.load_into(..., keep_fp32=WanModel._keep_in_fp32)`; it holds no
buffers (the RoPE angles are computed in forward and cached per grid/device).

Wan2.2 differs only in its inputs: I2V-A14B has no CLIP branch (`y` only), and the timestep may be
given per token ([B, L], TI2V image-to-video: 0 on the clean first frame's tokens), which gives
per-token modulations. A [B] timestep keeps Wan2.1's one modulation per sample, broadcast over the
tokens (the Wan2.2 reference expands it to every token: the same values, L times the work).

Differences from the reference that do not change the math: inputs are batched tensors (all
samples the same size, so there is no padding to `seq_len` and no key mask), the image tokens
are passed to cross-attention apart from the text tokens instead of being split off by
`context.shape[1] - 512`, and no autocast is used (see dit_blocks.py for the precision rules).
Its config, `WanDiTConfig` (with what diffusers' configs can state beyond the official ones),
is in dit_config.py and re-exported here.
Reference quirks kept on purpose: the text context is zero-padded to `text_len` and the padding
tokens are attended (no mask: the reference passes `context_lens=None`).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.models.block_stack import hooked_blocks
from lightx2v.errors import InputError
from lightx2v.models.wan.dit_blocks import Head, MLPProj, RopeCache, WanBlock, linear
from lightx2v.models.wan.dit_config import (  # noqa: F401 (re-exported: the config's home was this module)
    CLIP_TOKENS, MODEL_TYPES, ROPE_MAX_SEQ_LEN, WanDiTConfig, image_fields_from_shapes,
)


def token_timesteps(t: Tensor, grid: tuple[int, int, int], clean_frames: int = 0) -> Tensor:
    """Per-token timesteps [B, L] for a patch-token grid (f, h, w) (`WanModel.token_grid`): t[b] on
    every token of sample b, 0 on the tokens of the first `clean_frames` token frames (Wan2.2 TI2V
    image-to-video: the first latent frame is the clean image latent). Tokens are in the model's
    order: frame-major, then rows, then columns (the patch embedding flattened)."""
    f, h, w = grid
    if t.ndim != 1 or not 0 <= clean_frames <= f:
        raise InputError(f"token_timesteps needs t [B] and 0 <= clean_frames <= {f}, got t {tuple(t.shape)}, "
                         f"clean_frames {clean_frames}")
    out = t[:, None, None].expand(-1, f, h * w).clone()  # [B, f, h * w]
    out[:, :clean_frames] = 0
    return out.flatten(1)


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """[cos | sin] embedding of timesteps t: [B] -> [B, dim], computed in float64 as the reference."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class WanModel(nn.Module):
    """Wan DiT. forward(x [B, in_dim, F, H, W], t [B] | [B, L], context [B, Lc, text_dim]) -> [B, out_dim, F, H, W]."""

    # params whose name contains one of these stay float32 (load_into(keep_fp32=...)): the time
    # path and modulations, as the official code runs them in fp32, and the norm weights, which
    # the official run multiplies in fp32 too (its weights are fp32 under autocast)
    _keep_in_fp32 = (
        "time_embedding", "time_projection", "modulation", "norm3", "norm_q", "norm_k",
        "img_emb.proj.0", "img_emb.proj.4",
    )
    # What the engine reads (lightx2v.runtime.engine): the ModuleLists of identical blocks (regional
    # compile, offload, caching wrap these), and the linears a quantizer may touch, as a regex over
    # module names: the blocks' attention and FFN projections, what LightX2V quantizes; embeddings,
    # the time projection and the head stay in float (small, precision-sensitive).
    _repeated_blocks: tuple[str, ...] = ("blocks",)
    _quant_linears = r"blocks\.\d+\.(self_attn|cross_attn|ffn)\..+"
    # sequence parallelism (lightx2v.runtime.parallel.sequence): run_blocks' inputs cut along their
    # token dim (x [B, L, C], e0 [B, L, 6, C] when per token (TI2V), rope [L, 1, D/2, 2]; a size-1 dim,
    # e0 [B, 1, 6, C], is per sample and stays whole), the output gathered along x's; the attention
    # role whose keys are the tokens (the all-to-all / ring wraps it; cross-attention stays local)
    _sp_plan = {"x": 1, "e0": 1, "rope": 0}
    _sp_attention = ("self",)

    @staticmethod
    def key_from_diffusers(key: str) -> str | None:
        """This model's name for a diffusers WanTransformer3DModel key (LoRA files, DiT files)."""
        return dit_key_from_diffusers(key)

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        image_input = c.has_image_branch
        self.blocks = nn.ModuleList(
            WanBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps,
                     image_input and c.image_kv_proj)
            for _ in range(c.num_layers)
        )
        self.head = Head(c.dim, c.out_dim * math.prod(c.patch_size), c.eps)
        if image_input:
            self.img_emb = MLPProj(c.dim, 2 * c.clip_tokens if c.model_type == "flf2v" else None, c.image_dim)
        # RoPE (cos, sin) per token grid: derived data, so not a buffer (the model is meta-built);
        # named state with reset(), safe to share between threads
        self.rope_cache = RopeCache(c.head_dim)
        # cross-attention K/V kept for one generation (lightx2v.runtime.context_kv); None: computed every call
        self.context_cache = None
        # called around each block by run_blocks, outside the (compiled) block: None, or an object with
        # before_block(i) / after_block(i) (block offload, lightx2v.runtime.block_offload)
        self.block_hooks = None
        # the block stack's stand-in (lightx2v.runtime.cache): None runs `run_blocks`; else an object called as
        # runner(model, x, **kw) with run_blocks' arguments plus `e`, which calls run_blocks itself when it runs
        self.block_runner = None
        # the loop's StepContext of the call being made (set by the pipeline's model function; read by a
        # block_runner to decide per step and CFG branch); None outside a denoising loop
        self.step_context = None

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """RoPE (cos, sin) [L, 1, head_dim/2, 2] fp32 for a token grid (cached)."""
        return self.rope_cache.get(grid, device)

    def token_grid(self, latent_size: tuple[int, ...]) -> tuple[int, int, int]:
        """The patch-token grid (f, h, w) of latents of size (F, H, W); L = f * h * w tokens."""
        return tuple(s // p for s, p in zip(latent_size, self.config.patch_size))

    def _check_inputs(self, x: Tensor, t: Tensor, context: Tensor, clip_fea: Tensor | None, y: Tensor | None) -> None:
        c = self.config
        if x.ndim != 5:
            raise InputError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        if c.has_image_branch and (clip_fea is None or y is None):
            raise InputError(f"the {c.model_type} model needs clip_fea and y (the image conditioning)")
        if c.needs_y and y is None:
            raise InputError(f"the {c.model_type} model needs y (the mask and image latents, concatenated to x on "
                             "channels)")
        if clip_fea is not None and not c.has_image_branch:
            raise InputError(f"this {c.model_type} model has no CLIP image branch; clip_fea must be None")
        channels = x.shape[1] + (y.shape[1] if y is not None else 0)
        if channels != c.in_dim:
            raise InputError(f"x (+ y) has {channels} channels, the {c.model_type} model expects {c.in_dim}")
        if any(s % p for s, p in zip(x.shape[2:], c.patch_size)):
            raise InputError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch size {c.patch_size}")
        grid = self.token_grid(x.shape[2:])
        for axis, n in zip(("frame", "height", "width"), grid):
            if n > c.rope_max_seq_len:
                raise InputError(
                    f"latent grid {grid} has {n} positions on the {axis} axis; this model's RoPE covers "
                    f"rope_max_seq_len = {c.rope_max_seq_len} per axis (fewer frames or a smaller size)"
                )
        b, n = x.shape[0], math.prod(grid)
        if t.shape not in ((b,), (b, n)):
            raise InputError(f"t must be [B] = [{b}] or [B, L] = [{b}, {n}] (one timestep per token of the "
                             f"{grid} patch grid), got shape {tuple(t.shape)}")
        if (context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[1] > c.text_len
                or context.shape[2] != c.text_dim):
            raise InputError(
                f"context must be [B={x.shape[0]}, <= {c.text_len}, {c.text_dim}], got {tuple(context.shape)}"
            )
        if clip_fea is not None and (clip_fea.numel() != x.shape[0] * c.image_tokens * c.image_dim
                                     or clip_fea.shape[-1] != c.image_dim):
            raise InputError(
                f"clip_fea must be [B, {c.image_tokens}, {c.image_dim}] for this {c.model_type} model, "
                f"got {tuple(clip_fea.shape)}"
            )

    def embed_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t: [B] | [B, L] -> (e [B, 1 | L, C], e0 [B, 1 | L, 6, C]), both float32.

        A [B] t gives one embedding per sample, broadcast over the tokens by the blocks and the head.
        A [B, L] t (one per token) is embedded once per distinct value and gathered per token: the
        values of the reference's per-token embedding without its [B * L, 6C] matmuls (a few distinct
        values, e.g. 0 and t; `torch.unique` waits for the device once)."""
        if t.ndim == 1:
            e, e0 = self._embed_time(t)
            return e[:, None], e0[:, None]
        values, index = torch.unique(t, return_inverse=True)  # index: [B, L]
        e, e0 = self._embed_time(values)
        return e[index], e0[index]

    def _embed_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t: [N] -> (e [N, C], e0 [N, 6, C]), both float32."""
        s = sinusoidal_embedding(self.config.freq_dim, t).float()
        e = linear(self.time_embedding[0], s)
        e = linear(self.time_embedding[2], self.time_embedding[1](e)).float()
        e0 = linear(self.time_projection[1], self.time_projection[0](e)).float()
        return e, e0.unflatten(1, (6, self.config.dim))

    def embed_context(self, context: Tensor, clip_fea: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Text context (zero-padded to text_len) and image context, projected to the model width."""
        c = self.config
        context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))  # [B, text_len, text_dim]
        ctx = linear(self.text_embedding[0], context)
        ctx = linear(self.text_embedding[2], self.text_embedding[1](ctx))
        ctx_img = None
        if clip_fea is not None:
            # flf2v: also accepts the reference's [2B, 257, 1280] (first/last frame per sample)
            ctx_img = self.img_emb(clip_fea.reshape(ctx.shape[0], c.image_tokens, c.image_dim))
            if not c.image_kv_proj:
                # no k_img / v_img: the image tokens are attended with the text ones (diffusers'
                # added_kv_proj_dim None puts them first; the order does not change the attention)
                return torch.cat([ctx_img.to(ctx.dtype), ctx], dim=1), None
        return ctx, ctx_img

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, L, prod(patch) * out_dim] -> [B, out_dim, F, H, W]."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, f, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, clip_fea: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Predict the flow (velocity) for latents x at timesteps t.

        x: [B, in_dim (or in_dim - y's channels), F, H, W]; t: [B] float timesteps in [0, 1000], or
        [B, L] one per patch token (L = f * h * w of `token_grid(x.shape[2:])`, in the tokens' order;
        `token_timesteps` builds Wan2.2 TI2V's); context: [B, Lc <= text_len, text_dim] T5 features
        (zero-padded to text_len here); clip_fea: [B, 257 | 514, 1280] CLIP features (i2v | flf2v with
        the CLIP branch); y: [B, 20, F, H, W] mask + image latents (i2v, flf2v), concatenated to x on
        channels. Returns float32 [B, out_dim, F, H, W].
        """
        self._check_inputs(x, t, context, clip_fea, y)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        x = linear(self.patch_embedding, x)  # [B, C, f, h, w]
        grid = tuple(x.shape[2:])
        # [B, L, C] fp32 residual stream; made contiguous, else the transposed strides of the conv
        # output would carry into every elementwise op of every block (slow, non-vectorized kernels)
        x = x.flatten(2).transpose(1, 2).contiguous().float()
        e, e0 = self.embed_time(t)
        kw = dict(e=e, e0=e0, kv=self.cross_kv(context, clip_fea), rope=self.rope(grid, x.device))
        x = self.run_blocks(x, **kw) if self.block_runner is None else self.block_runner(self, x, **kw)
        x = self.head(x, e)  # [B, L, prod(patch) * out_dim]
        return self.unpatchify(x, grid).float()

    def cross_kv(self, context: Tensor, clip_fea: Tensor | None) -> Iterable[tuple[Tensor, ...]]:
        """Every block's cross-attention K/V for this context (CrossAttention.context_kv), in block
        order: they do not depend on x or t. Each block's are made when `run_blocks` reaches it (so
        with block offload while its weights are on the device). With a `context_cache` (the engine's
        context_kv step, lightx2v.runtime.context_kv) they are kept: a generation makes them once, at
        its first step; without one, every call makes them again (one block's in memory at a time)."""
        if self.context_cache is None:
            ctx, ctx_img = self.embed_context(context, clip_fea)
            return (block.cross_attn.context_kv(ctx, ctx_img) for block in self.blocks)

        def makers() -> list[Callable[[], tuple[Tensor, ...]]]:
            c, c_img = self.embed_context(context, clip_fea)
            return [functools.partial(block.cross_attn.context_kv, c, c_img) for block in self.blocks]

        return self.context_cache.get_lazy((context, clip_fea), makers)

    def run_blocks(self, x: Tensor, **kw: Any) -> Tensor:
        """The block stack: x [B, L, C] fp32 -> [B, L, C] fp32. The one boundary a cache or a parallel
        transform wraps (lightx2v.runtime): forward = embed -> run_blocks -> head. `kw`: e0 [B, 1 | L, 6, C]
        (per sample, or per token: a sequence-parallel split cuts its token dim with x's), kv (one
        tuple per block run, in order: its cross-attention K/V [B, Lc, H, D], `cross_kv`), rope [L, 1, D/2, 2],
        e [B, 1 | L, C] (the time embedding: not read by the blocks; a cache's indicator). `blocks`: the
        range of blocks to run (a first-block cache runs block 0, then the rest). `block_hooks` (when set)
        run around each block, outside it: a compiled block never sees them."""
        kvs = iter(kw["kv"])
        # a chunked block may write its output over its input when nobody reads that again: every input
        # made here, and forward's own (its embedding; not when a block runner called: it keeps its x)
        own = self.block_runner is None and "blocks" not in kw
        for i in hooked_blocks(len(self.blocks), self.block_hooks, kw.get("blocks", slice(None))):
            kv = next(kvs)  # after the before-hook: K/V made now use the block's weights
            block = self.blocks[i]
            if block.chunk_tokens:
                block.chunk_in_place = own
            x = block(x, kw["e0"], kv, kw["rope"])
            own = True
        return x


# ---------------------------------------------------------------- diffusers -> official keys

_ATTN = {
    "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k",
    "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img",
}
_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_BLOCK = {
    **{f"attn1.{k}": f"self_attn.{v}" for k, v in _ATTN.items()},
    **{f"attn2.{k}": f"cross_attn.{v}" for k, v in _ATTN.items()},
    "norm2": "norm3",  # diffusers' norm2 is the affine cross-attention norm, the official norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_PARAM = re.compile(r"(?P<mod>.+)\.(?P<p>weight|bias)")
_BLOCK_KEY = re.compile(r"blocks\.(?P<i>\d+)\.(?P<rest>.+)")
_WHOLE = {
    "scale_shift_table": "head.modulation",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}


def dit_key_from_diffusers(key: str) -> str | None:
    """Official key for a diffusers WanTransformer3DModel key; unknown keys are returned unchanged
    (so that load_into reports them), keys diffusers itself ignores map to None."""
    if key in _WHOLE:
        return _WHOLE[key]
    block = _BLOCK_KEY.fullmatch(key)
    prefix, rest, table = "", key, _TOP
    if block:
        prefix, rest, table = f"blocks.{block['i']}.", block["rest"], _BLOCK
        if rest == "scale_shift_table":
            return prefix + "modulation"
        if rest.startswith("attn2.norm_added_q."):
            return None  # in some diffusers I2V checkpoints, unused (diffusers' _keys_to_ignore_on_load_unexpected)
    param = _PARAM.fullmatch(rest)
    if param and param["mod"] in table:
        return f"{prefix}{table[param['mod']]}.{param['p']}"
    return key
