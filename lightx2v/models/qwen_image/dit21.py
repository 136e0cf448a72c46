"""The Qwen-Image-2.1 DiT: a sibling of the Qwen-Image MMDiT (dit.py), not a configuration of it.

Design: `QwenImage21DiT` computes what diffusers' `QwenImage21Transformer2DModel` computes, with its
parameter names (the layers: dit21_blocks.py). 2.1 shares no layer with Qwen-Image's dual-stream
blocks: one stream of [text, condition images, target image], block-causal attention, one
modulation shared by every block, SwiGLU MLPs, no biases. It holds no buffers.

The prefix and its K/V. The text and condition-image tokens (the prefix) never attend to the target
image and, with `causal_condition` (the release), are modulated by the embedding of t = 0, so every
block's prefix K/V are the same at every step. `prefix(prompt)` makes a `PrefixKV`: it runs the
prefix through the blocks, one block at a time when the block stack first asks for that block's
K/V (so block offload's weights are on the device at that time), and keeps the K/V. forward then
runs the target tokens only. Where the K/V live is the engine's `context_kv` step (on by default):
with it, `context_cache` keeps each CFG branch's `PrefixKV` for the generation (the reference's
`use_kv_cache=True`: prefill at step 0, decode after); without it every step makes them again (the
reference's `use_kv_cache=False`: the whole joint sequence every step). The two are the same math;
with `causal_condition=False` the prefix depends on the step and is always made again.

Inputs: `x` [B, h*w, in_channels] the target latents, unpatched, raster order (diffusers' packed
latents of 2.1); `t` [B] in [0, 1000]; `prompt` a `Prompt21`: the text encoder's states [B, Lt, D]
and, for condition images, which of those positions are image slots (each one 2 x 2 latent tokens)
and the images' latents in raster order. The output is float32 [B, h*w, out_channels].
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.block_stack import hooked_blocks
from lightx2v.models.qwen_image.dit21_blocks import (
    SLOT_TOKENS, Block21, ScaleNormOut, TextProjection, TimeTextEmbed, joint_positions, prefix_segments,
    rope_from_positions,
)
from lightx2v.models.wan.dit_blocks import compute_dtype, linear

__all__ = ["Prompt21", "PrefixKV", "QwenImage21DiT", "QwenImage21DiTConfig"]


@dataclass(frozen=True)
class QwenImage21DiTConfig:
    """diffusers' QwenImage21Transformer2DModel config (its defaults: the released 2.1)."""

    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096
    mlp_ratio: int = 3
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    eps: float = 1e-6
    causal_condition: bool = True
    patch_size: int = 1

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], where: str = "transformer/config.json") -> "QwenImage21DiTConfig":
        """Every field honoured, or refused by name."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for key, value in cfg.items():
            if key.startswith("_"):
                continue
            if key not in fields:
                raise CheckpointError(f"{where}: unknown field {key!r} for a QwenImage21Transformer2DModel; "
                                      f"supported: {', '.join(sorted(fields))}")
            kw[key] = tuple(value) if key == "axes_dims_rope" else value
        if kw.get("out_channels") is None:
            kw["out_channels"] = kw.get("in_channels", cls.in_channels)
        out = cls(**kw)
        if out.patch_size != 1:
            raise CheckpointError(f"{where}: patch_size {out.patch_size}; Qwen-Image-2.1 reads latents unpatched (1)")
        if sum(out.axes_dims_rope) != out.attention_head_dim:
            raise CheckpointError(f"{where}: axes_dims_rope {list(out.axes_dims_rope)} must sum to attention_head_dim "
                                  f"{out.attention_head_dim}")
        return out


@dataclass(frozen=True)
class Prompt21:
    """One CFG branch's conditioning. context [B, Lt, context_in_dim]: the encoder's states (all
    attended: one prompt, no padding); image_slots [Lt] bool or None: the positions holding a
    condition image's slots; images [B, sum h*w, in_channels] or None: the condition images' latents,
    raster order, one image after the other; image_shapes: each one's (1, h, w) token grid."""

    context: Tensor
    image_slots: Optional[Tensor] = None
    images: Optional[Tensor] = None
    image_shapes: tuple[tuple[int, int, int], ...] = ()


class PrefixKV:
    """Each block's K/V [B, Lp, H, D] over the prefix, made in block order on first access (block i
    needs block i-1's output stream, kept only until the next block is made)."""

    def __init__(self, model: "QwenImage21DiT", stream: Tensor, mod: Tensor, rope: Tensor, segments) -> None:
        self._model, self._stream, self._mod, self._rope, self._segments = model, stream, mod, rope, segments
        self._kv: list = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._model.transformer_blocks)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        with self._lock:
            while len(self._kv) <= i:
                block = self._model.transformer_blocks[len(self._kv)]
                self._stream, k, v = block.prefill(self._stream, self._mod, self._rope, self._segments)
                self._kv.append((k, v))
            if len(self._kv) == len(self):
                self._stream = None  # the last block's prefix output is read by nobody
            return self._kv[i]

    def made(self) -> int:
        return len(self._kv)


class QwenImage21DiT(nn.Module):
    """forward(x [B, h*w, in_channels], t [B], prompt: Prompt21, grid (h, w)) -> [B, h*w, out_channels] fp32."""

    _keep_in_fp32 = ("time_text_embed", "txt_in.text_norm", "norm_out", "norm_q", "norm_k", "modulation")
    _repeated_blocks: tuple[str, ...] = ("transformer_blocks",)
    _cache_methods: tuple[str, ...] = ()  # no feature cache is tried on this stack yet
    _quant_linears = r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0)|img_mlp\.(proj|out|gate_layer))"

    @staticmethod
    def key_from_diffusers(key: str) -> str | None:
        """This model's name for a diffusers QwenImage21Transformer2DModel key: the same."""
        return key

    def __init__(self, config: QwenImage21DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.time_text_embed = TimeTextEmbed(c.dim)
        self.txt_in = TextProjection(c.context_in_dim, c.dim, c.eps)
        self.img_in = nn.Linear(c.in_channels, c.dim, bias=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 4 * c.dim, bias=False))
        self.transformer_blocks = nn.ModuleList(Block21(c.dim, c.num_attention_heads, c.mlp_ratio, c.eps)
                                                for _ in range(c.num_layers))
        self.norm_out = ScaleNormOut(c.dim, c.eps)
        self.proj_out = nn.Linear(c.dim, c.out_channels, bias=False)
        self.block_hooks = None    # block offload (lightx2v.runtime.block_offload)
        self.block_runner = None   # a feature cache's stand-in for run_blocks (lightx2v.runtime.cache)
        self.step_context = None   # the loop's StepContext of the call (set by the pipeline)
        self.context_cache = None  # the engine's context_kv step: a ContextKVCache of PrefixKV per branch

    # -- embeddings ------------------------------------------------------------------------------
    def embed_time(self, t: Tensor) -> Tensor:
        """t [N] in [0, 1000] -> [N, C] fp32; t / 1000 rounded to the compute dtype, as the reference."""
        sigma = (t.float() / 1000).to(compute_dtype(self.img_in)).float()
        return self.time_text_embed.timestep_embedder(sigma)

    def modulate(self, e: Tensor) -> Tensor:
        """e [N, C] -> the shared modulation [N, 1, 4C] fp32."""
        return linear(self.modulation[1], torch.nn.functional.silu(e)).float()[:, None]

    def _layout(self, prompt: Prompt21, grid: tuple[int, int]) -> tuple[list[bool], list, int]:
        """(is_image over the joint sequence, the image shapes with the target last, prefix length)."""
        lt = prompt.context.shape[1]
        slots = [False] * lt if prompt.image_slots is None else [bool(s) for s in prompt.image_slots.tolist()]
        if len(slots) != lt:
            raise InputError(f"image_slots must have {lt} entries (one per context token), got {len(slots)}")
        is_image = [f for s in slots for f in ([True] * SLOT_TOKENS if s else [False])]
        shapes = [tuple(s) for s in prompt.image_shapes] + [(1, *grid)]
        n_cond = sum(math.prod(s) for s in shapes[:-1])
        if sum(is_image) != n_cond:
            raise InputError(f"the prompt's {sum(slots)} image slots hold {sum(is_image)} latent tokens, but the "
                             f"condition images have {n_cond}")
        prefix_len = len(is_image)
        return is_image + [True] * math.prod(grid), shapes, prefix_len

    def prefix(self, prompt: Prompt21, grid: tuple[int, int], t: Optional[Tensor] = None) -> PrefixKV:
        """The prefix's K/V, made lazily; `t` [B] only without causal_condition (the prefix then follows
        the step)."""
        is_image, shapes, lp = self._layout(prompt, grid)
        ctx = self.txt_in(prompt.context)  # [B, Lt, C] fp32
        if prompt.image_slots is not None and bool(prompt.image_slots.any()):
            repeats = torch.where(prompt.image_slots, SLOT_TOKENS, 1).to(ctx.device)
            stream = ctx.repeat_interleave(repeats, dim=1)  # [B, Lp, C]
            stream[:, torch.tensor(is_image[:lp], device=ctx.device)] = linear(self.img_in, prompt.images).float()
        else:
            stream = ctx
        e = self.embed_time(t) if t is not None else self.embed_time(torch.zeros(1, device=ctx.device))
        pos = joint_positions(is_image, shapes)[:, :lp]
        rope = rope_from_positions(pos, self.config.axes_dims_rope, ctx.device)
        return PrefixKV(self, stream, self.modulate(e), rope, prefix_segments(is_image, shapes, lp))

    def prefix_kv(self, prompt: Prompt21, grid: tuple[int, int], t: Tensor) -> PrefixKV:
        """The prefix K/V for this call: the generation's (context_cache) or made now."""
        if not self.config.causal_condition:
            return self.prefix(prompt, grid, t)
        if self.context_cache is None:
            return self.prefix(prompt, grid)
        tensors = (prompt.context, prompt.image_slots, prompt.images)
        return self.context_cache.get(tensors, lambda: self.prefix(prompt, grid))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, prompt: Prompt21, grid: Sequence[int]) -> Tensor:
        """Predict the flow of the target image's tokens (see the module docstring)."""
        c = self.config
        grid = (int(grid[0]), int(grid[1]))
        if x.ndim != 3 or x.shape[1:] != (grid[0] * grid[1], c.in_channels):
            raise InputError(f"x must be [B, {grid[0] * grid[1]}, {c.in_channels}] (the target's latents, "
                             f"{grid[0]}x{grid[1]} tokens), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise InputError(f"t must be [B] = [{x.shape[0]}], got {tuple(t.shape)}")
        if prompt.context.ndim != 3 or prompt.context.shape[2] != c.context_in_dim:
            raise InputError(f"context must be [B, Lt, {c.context_in_dim}], got {tuple(prompt.context.shape)}")
        kv = self.prefix_kv(prompt, grid, t)
        is_image, shapes, lp = self._layout(prompt, grid)
        rope = rope_from_positions(joint_positions(is_image, shapes)[:, lp:], c.axes_dims_rope, x.device)
        e = self.embed_time(t)  # [B, C]
        h = linear(self.img_in, x).float()  # [B, L, C] fp32
        kw = dict(e=e[:, None], mod=self.modulate(e), rope=rope, prefix=kv)
        h = self.run_blocks(h, **kw) if self.block_runner is None else self.block_runner(self, h, **kw)
        return linear(self.proj_out, self.norm_out(h, e)).float()

    def run_blocks(self, x: Tensor, **kw: Any) -> Tensor:
        """The block stack over the target tokens: x [B, L, C] fp32 -> [B, L, C] fp32. kw: mod [B, 1, 4C]
        (the shared modulation), rope [L, 1, D/2, 2], prefix (a PrefixKV: block i's K/V read after
        `before_block(i)`), e [B, 1, C] (a cache's indicator), blocks (a range)."""
        prefix = kw["prefix"]
        for i in hooked_blocks(len(self.transformer_blocks), self.block_hooks, kw.get("blocks", slice(None))):
            x = self.transformer_blocks[i](x, kw["mod"], kw["rope"], prefix[i])
        return x
