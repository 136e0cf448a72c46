"""The HunyuanVideo-1.5 diffusion transformer (8.3B): T2V and I2V as inputs of one module.

Design: `HunyuanVideo15DiT` reproduces the official `HunyuanVideo_1_5_DiffusionTransformer`
(tencent/HunyuanVideo-1.5, hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py) with the
official parameter names: a released transformer/<variant>/*.safetensors loads by name, a diffusers
one through `state_dict_from_diffusers` (dit_keys.py). Built on the meta device; no buffers (the
RoPE table is computed in forward and cached per grid: `rope_cache`, with `reset()`).

forward = embed -> `run_blocks` -> head:
- embed: the latents (with the image-condition latents and mask `y` concatenated on channels) to
  patch tokens; the timestep embedding `vec`; the conditioning tokens of each sample, in the
  reference's order [image (I2V), byT5 glyph, Qwen2.5-VL text], each with its condition-type
  embedding (0 text, 1 glyph, 2 image). The text states run through the token refiner (`txt_in`).
- run_blocks: the 54 double-stream blocks (the releases have no single-stream block).
- head: the modulated final layer on the image tokens, unpatchified.

Differences from the reference that do not change the output: the reference pads every sample's
conditioning to a fixed length and masks the padding in attention; here padding tokens are removed
(selected by the masks) before the refiner and the blocks, and a batch whose samples have unequal
numbers of conditioning tokens runs its joint attention one sample at a time (dit_blocks.joint_attention),
so the attention dispatch needs no mask and the padding costs nothing.
SSTA (attn_mode "flex-block-attn", the *_distilled_sparse releases): forward builds an `SSTALayout`
(the image token grid and the attn_param settings) that run_blocks hands each block (not the blocks
win_type "hybrid" keeps dense); the "ssta" attention backend runs it (lightx2v.ops.ssta). A T2V call (no image states,
or all-zero ones as the reference's pipelines pass) has no image tokens, as the reference masks
them all. No autocast: see dit_blocks.py for the precision rules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightx2v.models.block_stack import hooked_blocks
from lightx2v.errors import InputError
from lightx2v.models.hunyuan15.dit_blocks import (
    ByT5Mapper, FinalLayer, MMDoubleStreamBlock, RopeCache, SingleTokenRefiner, TimestepEmbedder, VisionProjection,
    linear, modulate,
)
from lightx2v.models.hunyuan15.dit_config import BYT5_HIDDEN, HunyuanVideo15DiTConfig
from lightx2v.models.hunyuan15.dit_keys import key_from_diffusers
from lightx2v.ops.ssta import SSTALayout

TEXT, GLYPH, IMAGE = 0, 1, 2  # the condition-type embedding's rows (the reference's order)


class HunyuanVideo15DiT(nn.Module):
    """forward(x [B, C, F, H, W], t [B], text [B, Lt, 3584], text_mask [B, Lt], ...) -> [B, out, F, H, W]."""

    # params whose name contains one of these stay float32 (load_into(keep_fp32=...)): the time
    # embeddings and the norm weights (small; the reference runs them in fp32 under autocast)
    # (substrings: "txt_in.t_embedder", not "t_embedder", which "input_embedder" contains)
    _keep_in_fp32 = ("time_in.", "time_r_in.", "txt_in.t_embedder.", "_norm.weight", "norm1.", "norm2.",
                     "byt5_in.layernorm.", "vision_in.proj.0.", "vision_in.proj.4.")
    # What the engine reads: the ModuleList of identical blocks (regional compile, offload, caching),
    # and the linears a quantizer may touch, as a regex over module names: the blocks' attention
    # projections, MLPs and modulation linears (img_mod / txt_mod hold a third of the 8.3B weights);
    # the embedders, the refiner and the head stay in float (small, precision-sensitive).
    _repeated_blocks: tuple[str, ...] = ("double_blocks",)
    # the feature caches its block stack supports (lightx2v.runtime.cache): all four; firstblock's split
    # after block 0 goes on with block 0's text stream (run_blocks hands it back through `carry`)
    _cache_methods: tuple[str, ...] = ("teacache", "magcache", "firstblock", "taylorseer")
    # sequence parallelism (lightx2v.runtime.parallel.sequence): the image tokens and their RoPE are cut
    # along the tokens; the conditioning stream (image, glyph, text) stays whole on every rank and
    # follows the image tokens in the joint attention (the refiner's attention, before the stack, is not cut)
    _sp_plan = {"x": 1, "rope": 0}
    _sp_attention = ("self",)
    _sp_joint = "after"
    _quant_linears = r"double_blocks\.\d+\.(img|txt)_(attn_(q|k|v|proj)|mlp\.fc[12]|mod\.linear)"

    @staticmethod
    def key_from_diffusers(key: str) -> str | None:
        """This model's name for a diffusers HunyuanVideo15Transformer3DModel key (dit_keys.py: three
        diffusers keys of the refiner's q, k, v are slices of one official tensor)."""
        return key_from_diffusers(key)

    def __init__(self, config: HunyuanVideo15DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.img_in = nn.Module()
        self.img_in.proj = nn.Conv3d(c.patch_in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.txt_in = SingleTokenRefiner(c.text_states_dim, c.hidden_size, c.heads_num, c.num_refiner_layers)
        self.time_in = TimestepEmbedder(c.hidden_size)
        if c.use_meanflow:
            self.time_r_in = TimestepEmbedder(c.hidden_size)
        if c.glyph_byT5_v2:
            self.byt5_in = ByT5Mapper(c.byt5_dim, BYT5_HIDDEN, c.hidden_size)
        if c.vision_projection:
            self.vision_in = VisionProjection(c.vision_states_dim, c.hidden_size)
        if c.use_cond_type_embedding:
            self.cond_type_embedding = nn.Embedding(3, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            MMDoubleStreamBlock(c.hidden_size, c.heads_num, c.mlp_hidden, c.qk_norm, c.qkv_bias)
            for _ in range(c.num_layers))
        self.final_layer = FinalLayer(c.hidden_size, c.out_channels * math.prod(c.patch_size))
        self.rope_cache = RopeCache(c.rope_dim_list, c.rope_theta)
        # SSTA's settings when the DiT was trained with it (attn_mode flex-block-attn): forward hands the
        # blocks a layout; a backend that takes one ("ssta") runs sparse, any other ignores it (dense)
        self.sparse = c.sparse_attention()
        # as the Wan DiT (lightx2v.models.wan.dit): hooks around each block (block offload), the block
        # stack's stand-in (a cache), and the loop's StepContext of the current call
        self.block_hooks = None
        self.block_runner = None
        self.step_context = None

    def token_grid(self, latent_size: tuple[int, ...]) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(latent_size, self.config.patch_size))

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        return self.rope_cache.get(grid, device)

    # ------------------------------------------------------------ conditioning tokens

    def _typed(self, tokens: Tensor, kind: int) -> Tensor:
        if not self.config.use_cond_type_embedding:
            return tokens
        return tokens + self.cond_type_embedding.weight[kind].float()

    def embed_condition(self, t: Tensor, text: Tensor, text_mask: Tensor, byt5: Tensor | None,
                        byt5_mask: Tensor | None, image: Tensor | None) -> tuple[Tensor, list[int] | None]:
        """Each sample's valid conditioning tokens, [image, glyph, text], zero-padded to the longest:
        (txt [B, Lc, C] fp32, valid counts per sample, or None when all samples have Lc)."""
        per_sample = []
        for b in range(text.shape[0]):
            parts = []
            if image is not None:
                parts.append(self._typed(self.vision_in(image[b:b + 1]).float()[0], IMAGE))
            if byt5 is not None:
                parts.append(self._typed(self.byt5_in(byt5[b][byt5_mask[b].bool()][None])[0], GLYPH))
            words = text[b][text_mask[b].bool()][None]  # [1, n, text_dim]
            parts.append(self._typed(self.txt_in(words, t[b:b + 1])[0], TEXT))
            per_sample.append(torch.cat(parts))
        counts = [s.shape[0] for s in per_sample]
        txt = nn.utils.rnn.pad_sequence(per_sample, batch_first=True)
        return txt, None if len(set(counts)) == 1 else counts

    def _check_inputs(self, x, t, text, text_mask, byt5, byt5_mask, image, y) -> None:
        c = self.config
        if x.ndim != 5:
            raise InputError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        channels = x.shape[1] + (y.shape[1] if y is not None else 0)
        if channels != c.patch_in_channels:
            raise InputError(f"x (+ y) has {channels} channels, this DiT expects {c.patch_in_channels} "
                             f"(latents {c.in_channels}" + (f" + condition latents {c.in_channels} + mask 1)"
                                                            if c.concat_condition else ")"))
        if any(s % p for s, p in zip(x.shape[2:], c.patch_size)):
            raise InputError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch size {c.patch_size}")
        b = x.shape[0]
        if t.shape != (b,):
            raise InputError(f"t must be [B] = [{b}], got shape {tuple(t.shape)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != c.text_states_dim or text_mask.shape != text.shape[:2]:
            raise InputError(f"text must be [B={b}, L, {c.text_states_dim}] with text_mask [B, L], got "
                             f"{tuple(text.shape)} and {tuple(text_mask.shape)}")
        if byt5 is not None and (not c.glyph_byT5_v2 or byt5_mask is None or byt5.shape[0] != b
                                 or byt5.shape[2] != c.byt5_dim or byt5_mask.shape != byt5.shape[:2]):
            raise InputError(f"byt5 must be [B={b}, L, {c.byt5_dim}] with byt5_mask [B, L] (and a DiT with the glyph "
                             f"input), got {tuple(byt5.shape)}")
        if image is not None and (not c.vision_projection or image.ndim != 3 or image.shape[0] != b
                                  or image.shape[2] != c.vision_states_dim):
            raise InputError(f"image_embeds must be [B={b}, N, {c.vision_states_dim}] (and a DiT with the vision "
                             f"input), got {tuple(image.shape)}")

    # ------------------------------------------------------------ forward

    def forward(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, byt5: Tensor | None = None,
                byt5_mask: Tensor | None = None, image_embeds: Tensor | None = None, y: Tensor | None = None,
                t_r: Tensor | None = None) -> Tensor:
        """Predict the flow for latents x at timesteps t.

        x: [B, 32, F, H, W] latents (or all patch-embedding channels when y is None); y: [B, 33, F, H, W]
        image-condition latents + mask (zeros for T2V), concatenated to x; t: [B] in [0, 1000];
        text: [B, Lt, 3584] Qwen2.5-VL states with text_mask [B, Lt] (1 valid, 0 padding);
        byt5: [B, Lb, 1472] glyph states with byt5_mask [B, Lb] (None: no glyph tokens);
        image_embeds: [B, 729, 1152] SigLIP states for I2V (None or all zeros: T2V, no image tokens);
        t_r: [B] the MeanFlow models' second timestep. Returns float32 [B, 32, F, H, W].
        """
        self._check_inputs(x, t, text, text_mask, byt5, byt5_mask, image_embeds, y)
        if image_embeds is not None and not bool((image_embeds != 0).any()):
            image_embeds = None  # the reference's T2V: all-zero image states are masked out entirely
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        x = linear(self.img_in.proj, x)  # [B, C, f, h, w]
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).contiguous().float()  # [B, L, C] fp32 image stream
        vec = self.time_in(t)
        if t_r is not None:
            vec = vec + self.time_r_in(t_r)
        txt, valid = self.embed_condition(t, text, text_mask, byt5, byt5_mask, image_embeds)
        kw = dict(e=vec, txt=txt, txt_valid=valid, rope=self.rope(grid, x.device))
        if self.sparse is not None:  # an SSTA DiT: the image tokens' grid, for a backend that takes it
            kw["layout"] = SSTALayout(grid, self.sparse)
        if self.block_runner is not None:  # what a cache's rule reads (TeaCache: block 0's modulated input)
            kw["e0"] = self.cache_indicator(x, vec)
        x = self.run_blocks(x, **kw) if self.block_runner is None else self.block_runner(self, x, **kw)
        x = self.final_layer(x, vec)  # [B, L, prod(patch) * out]
        return self.unpatchify(x, grid).float()

    def cache_indicator(self, x: Tensor, vec: Tensor) -> Tensor:
        """TeaCache's indicator for this model, as LightX2V's HunyuanTransformerInferTeaCaching measures it
        (its published coefficients were fit on it): block 0's modulated image input,
        img_norm1(x) * (1 + scale) + shift with block 0's img_mod of vec. x: [B, L, C] fp32 -> [B, L, C] fp32.
        (Read where block 0's modulation weights are: an offloaded block's stay on the host.)"""
        b0 = self.double_blocks[0]
        w = next(b0.img_mod.parameters())
        shift, scale = (m.to(x.device).float() for m in b0.img_mod(vec.to(w.device)).chunk(6, dim=-1)[:2])
        return modulate(b0.img_norm1(x), shift, scale)

    def run_blocks(self, x: Tensor, **kw: Any) -> Tensor:
        """The block stack: x [B, L, C] fp32 image tokens -> [B, L, C] fp32. The one boundary a cache or
        a parallel transform wraps: forward = embed -> run_blocks -> head. kw: e [B, C] (the timestep
        embedding every block is modulated by), txt [B, Lc, C] fp32 (the conditioning stream, carried
        from block to block and dropped after the last, as the reference does), txt_valid (valid
        conditioning tokens per sample, or None), rope [L, 1, D/2, 2]; `blocks`: the range to run;
        `carry` (a dict, when given): receives {"txt": the text stream after the range}, the kw that run
        the blocks after it (the first-block cache: block 0, then the rest from block 0's text stream).
        `block_hooks` (when set) run around each block, outside it: a compiled block never sees them."""
        txt, layout, depth = kw["txt"], kw.get("layout"), len(self.double_blocks)
        for i in hooked_blocks(depth, self.block_hooks, kw.get("blocks", slice(None))):
            dense = layout is None or layout.config.dense_block(i, depth)  # win_type "hybrid": some blocks dense
            x, txt = self.double_blocks[i](x, txt, kw["e"], kw["rope"], kw["txt_valid"], None if dense else layout)
        if kw.get("carry") is not None:  # txt [B, Lc, C] fp32: whole on every rank under sequence parallelism
            kw["carry"]["txt"] = txt
        return x

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, L, prod(patch) * out] -> [B, out, F, H, W] (channels before the patch offsets, as the reference)."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        c = self.config.out_channels
        x = x.reshape(x.shape[0], f, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)
