"""The Qwen-Image MMDiT (20B): Qwen-Image, -2512, -Edit, -Edit-2509 and -Edit-2511 as
configurations of one module.

Design: `QwenImageDiT` computes what diffusers' `QwenImageTransformer2DModel` computes (the
reference: the releases ship only that layout) with its parameter names, so a released
transformer/ folder loads by name with `load_state_dict(assign=True)` on a meta-built model. It holds
no buffers (the RoPE tables are computed per request shape and cached: `rope_cache`).

Checkpoint names. diffusers' names are the official ones. LightX2V's single files for Qwen-Image
(its fp8 and Lightning DiTs, read by ModelTC/LightX2V's qwen_image weight classes) use the same
names (`transformer_blocks.{i}.attn.to_q.weight`, `img_mod.1.weight`, `time_text_embed.timestep_embedder.linear_1.weight`,
`norm_out.linear.weight` ...), so the rename table between the two is the identity:
`key_from_diffusers` returns its key. Its quantized files add a scale per quantized linear, which
the generic quantized-file loader reads, not a rename.

Inputs, as the reference's pipelines build them: `x` [B, L, in_channels] the packed latents (2 x 2
latent pixels per token) of the noisy image, followed for the edit models by the condition images'
packed latents along the sequence; `segments` the (frames, height, width) token grid of each part
in that order (diffusers' `img_shapes[b]`; every sample has the same). The forward returns the
prediction for the first segment's tokens only: diffusers computes the head on every token and its
edit pipelines keep the first segment.

Timesteps. `t` is in [0, 1000] (the loop's convention); the model embeds t / 1000 rounded to the
compute dtype, as the reference (its pipelines pass t / 1000 and it casts it to the activations'
dtype). With `zero_cond_t` (Edit-2511) the condition images' tokens are modulated by the embedding of
timestep 0: e0 carries both embeddings, [B, 2, C]; the text stream and the head use the step's.

Differences from diffusers that do not change the math: no text mask (the text tokens given are all
attended: a caller trims padding; diffusers' mask over padded batches is not reproduced), no
controlnet residuals, fp32 residual streams (dit_blocks.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from lightx2v.models.block_stack import hooked_blocks
from lightx2v.errors import InputError
from lightx2v.models.qwen_image.dit_blocks import (
    AdaNormOut, QwenImageBlock, RopeCache, Segments, TimeTextEmbed,
)
from lightx2v.models.qwen_image.dit_config import QwenImageDiTConfig
from lightx2v.models.wan.dit_blocks import RMSNormFP32, compute_dtype, linear

__all__ = ["QwenImageDiT", "QwenImageDiTConfig"]


class QwenImageDiT(nn.Module):
    """forward(x [B, L, in_channels], t [B], context [B, Lt, joint_attention_dim], segments)
    -> [B, L0, out_channels * patch^2] float32 (L0: the first segment's tokens)."""

    # params whose name contains one of these stay float32 (load_into(keep_fp32=...)): the time path,
    # the head's modulation and the norm weights (small; the modulations of the blocks are not: 1/3
    # of the model, see dit_blocks.py)
    _keep_in_fp32 = (
        "time_text_embed", "txt_norm", "norm_out", "norm_q", "norm_k", "norm_added_q", "norm_added_k",
    )
    # What the engine reads (lightx2v.runtime.engine): the repeated blocks (compile, offload, cache) and
    # the linears a quantizer may touch: every linear of the blocks (what LightX2V's fp8 files quantize,
    # the modulations included); the embeddings and the head stay in float
    _repeated_blocks: tuple[str, ...] = ("transformer_blocks",)
    # the feature caches its run_blocks boundary supports (lightx2v.runtime.cache): firstblock splits a
    # per-block K/V list this stack does not take; teacache / magcache are refused for want of coefficients
    _cache_methods: tuple[str, ...] = ("teacache", "magcache", "taylorseer")
    # sequence parallelism (lightx2v.runtime.parallel.sequence): run_blocks' image tokens are cut along the
    # tokens, and their RoPE rows (the table's rows after the first Lt, the text's: ("rope": (0, "txt"))),
    # `split` (where the condition images start) made relative to each rank's share; the text stream stays
    # whole on every rank and precedes the image tokens in the joint attention
    _sp_plan = {"x": 1, "rope": (0, "txt"), "split": "index"}
    _sp_attention = ("self",)
    _sp_joint = "before"
    _quant_linears = (r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj"
                      r"|to_add_out)|(img|txt)_mlp\.net\.(0\.proj|2)|(img|txt)_mod\.1)")

    @staticmethod
    def key_from_diffusers(key: str) -> str | None:
        """This model's name for a diffusers QwenImageTransformer2DModel key: the same (see above)."""
        return key

    def __init__(self, config: QwenImageDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.time_text_embed = TimeTextEmbed(c.dim)
        self.txt_norm = RMSNormFP32(c.joint_attention_dim, 1e-6)
        self.img_in = nn.Linear(c.in_channels, c.dim)
        self.txt_in = nn.Linear(c.joint_attention_dim, c.dim)
        self.transformer_blocks = nn.ModuleList(QwenImageBlock(c.dim, c.num_attention_heads)
                                                for _ in range(c.num_layers))
        self.norm_out = AdaNormOut(c.dim)
        self.proj_out = nn.Linear(c.dim, c.out_features)
        # RoPE tables per request shape: derived data, so not a buffer (the model is meta-built)
        self.rope_cache = RopeCache(c.axes_dims_rope)
        # called around each block by run_blocks, outside the (compiled) block: None, or an object with
        # before_block(i) / after_block(i) (block offload, lightx2v.runtime.block_offload)
        self.block_hooks = None
        # the block stack's stand-in (lightx2v.runtime.cache): None runs `run_blocks`; else runner(model, x, **kw)
        self.block_runner = None
        # the loop's StepContext of the call being made (set by the pipeline's model function)
        self.step_context = None

    def _check_inputs(self, x: Tensor, t: Tensor, context: Tensor, segments: Segments) -> None:
        c = self.config
        if not segments or any(len(s) != 3 or min(s) < 1 for s in segments):
            raise InputError(f"segments must be one or more (frames, height, width) token grids, got {list(segments)}")
        n = sum(math.prod(s) for s in segments)
        if x.ndim != 3 or x.shape[1:] != (n, c.in_channels):
            raise InputError(f"x must be [B, {n}, {c.in_channels}] (packed latents of the segments {list(segments)}), "
                             f"got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise InputError(f"t must be [B] = [{x.shape[0]}] (one timestep per sample), got {tuple(t.shape)}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.joint_attention_dim:
            raise InputError(f"context must be [B={x.shape[0]}, Lt, {c.joint_attention_dim}], got {tuple(context.shape)}")

    def embed_time(self, t: Tensor) -> Tensor:
        """t: [B] in [0, 1000] -> e0 [B, S, C] fp32: S = 1, or 2 with zero_cond_t (then timestep 0's second)."""
        sigma = (t.float() / 1000).to(compute_dtype(self.img_in)).float()  # rounded as the reference rounds it
        if self.config.zero_cond_t:
            sigma = torch.cat([sigma, sigma * 0])
        e = self.time_text_embed.timestep_embedder(sigma)  # [S * B, C]
        return e.unflatten(0, (-1, t.shape[0])).transpose(0, 1)  # [B, S, C]

    def forward(self, x: Tensor, t: Tensor, context: Tensor, segments: Sequence[Sequence[int]]) -> Tensor:
        """Predict the flow for the noisy image's tokens.

        x: [B, L, in_channels] packed latents, the noisy image's tokens first, then each condition
        image's (edit models); t: [B] timesteps in [0, 1000]; context: [B, Lt, joint_attention_dim]
        text encoder states (all attended); segments: the (frames, height, width) token grid of each
        part of x, in order (L = sum f*h*w). Returns float32 [B, f0*h0*w0, out_channels * patch^2].
        """
        segments = tuple(tuple(int(v) for v in s) for s in segments)
        self._check_inputs(x, t, context, segments)
        split = math.prod(segments[0])
        x = linear(self.img_in, x).float()  # [B, L, C] fp32 image stream
        txt = linear(self.txt_in, self.txt_norm(context)).float()  # [B, Lt, C] fp32 text stream
        e0 = self.embed_time(t)
        kw = dict(txt=txt, e0=e0, e=e0[:, :1], split=split,
                  rope=self.rope_cache.get(segments, txt.shape[1], x.device))
        x = self.run_blocks(x, **kw) if self.block_runner is None else self.block_runner(self, x, **kw)
        x = self.norm_out(x[:, :split], e0[:, 0], compute_dtype(self.proj_out))
        return linear(self.proj_out, x).float()

    def run_blocks(self, x: Tensor, **kw: Any) -> Tensor:
        """The block stack: image stream x [B, L, C] fp32 -> [B, L, C] fp32. The one boundary a cache or a
        parallel transform wraps: forward = embed -> run_blocks -> head. `kw`: txt [B, Lt, C] fp32 (the text
        stream, carried from block to block; only the image stream comes out, as only it reaches the head),
        e0 [B, S, C] (the time embeddings the blocks modulate with), split (tokens of the noisy image),
        rope [Lt + L, 1, D/2, 2], e [B, 1, C] (the step's embedding: not read by the blocks; a cache's
        indicator); `blocks`: the range of blocks to run. `block_hooks` (when set) run around each block."""
        txt = kw["txt"]
        for i in hooked_blocks(len(self.transformer_blocks), self.block_hooks, kw.get("blocks", slice(None))):
            x, txt = self.transformer_blocks[i](x, txt, kw["e0"], kw["rope"], kw["split"])
        return x

