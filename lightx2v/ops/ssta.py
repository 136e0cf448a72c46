"""SSTA: HunyuanVideo-1.5's selective and sliding tile attention, a plain-torch reference and a FlexAttention path.

Design (the reference's semantics: tencent/HunyuanVideo-1.5, hyvideo/models/transformers/modules/
ssta_attention.py `ssta_3d_attention` with sparse_type "ssta"; our own code):
- The image tokens (the first t*h*w of the sequence, raster order t, h, w) are padded up to whole
  tiles (zeros, or the last row repeated: `pad`) and regrouped tile by tile, tiles in raster order
  of the tile grid, tokens in raster order inside a tile. Padded tokens are real keys (a query of an
  attended tile sees them, score 0 for zero padding), as in the reference; their outputs are dropped.
- Which image tiles a query tile attends (`tile_mask`, [B, H or 1, N, N]): the union of
  (a) a sliding window of `window` tiles around it, its centre clamped into the tile grid, and
  (b) the `topk` tiles chosen from tile-mean q and k (means in the input dtype, scored in fp32,
      averaged over heads when `share_heads`): "importance" scores lambda * (1 + cos(q, k)) / 2 minus
      (1 - lambda) * the key tile's mean (1 + cos) / 2 to the other key tiles (redundancy); "similarity"
      scores q . k.
- Text (conditioning) tokens, after the image tokens: every query attends all of them, and every
  text query attends every key. Only valid text tokens are given (the DiT removes padding), so no
  padding token is attended. (The reference groups text into tile-sized blocks and so also attends
  the padding tokens sharing the last valid text block; we do not: see docs/formats.md.)
- Per grid (the reference's rules): a one-frame grid uses the image tile of the same volume
  (384 -> 1x16x24, 128 -> 1x16x8, 64 -> 1x8x8, 16 -> 1x4x4) and no window; up to 31 frames halve top-k.

`ssta_reference` computes the attention tile by tile (each query tile against its gathered key tiles
and the text), fp32 softmax: the oracle. `ssta_flex` is the fast path: the same tile mask as a
FlexAttention BlockMask (128-token blocks when the tile volume is a multiple of 128, else one block
per tile) whose `mask_mod` states the same rule per token; compiled on CUDA, the unfused (eager)
form on CPU (the same result, the dense cost: inductor's CPU kernel is not used, see docs/attention).
Layouts are [B, L, H, D] in and out, as everywhere at the dispatch point (lightx2v.ops.attention).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_IMAGE_TILES = {384: (1, 16, 24), 128: (1, 16, 8), 64: (1, 8, 8), 16: (1, 4, 4)}


@dataclass(frozen=True)
class SSTAConfig:
    """SSTA's parameters (the reference's attn_param, defaults = its defaults)."""

    tile: tuple[int, int, int] = (6, 8, 8)     # tile_size: tokens per tile along t, h, w
    window: tuple[int, int, int] = (3, 3, 3)   # win_size: the sliding window, in tiles
    topk: int = 64                             # ssta_topk: tiles chosen per query tile
    lam: float = 0.7                           # ssta_lambda: importance = lam * similarity - (1 - lam) * redundancy
    sampling: str = "importance"               # ssta_sampling_type: "importance" or "similarity"
    pad: str = "zero"                          # attn_pad_type: "zero" or "repeat"
    share_heads: bool = False                  # attn_mask_share_within_head: one tile mask for all heads
    dense_every: int = 0                       # win_type "hybrid": every dense_every-th block and the last dense

    def __post_init__(self) -> None:
        if self.sampling not in ("importance", "similarity") or self.pad not in ("zero", "repeat"):
            raise ValueError(f"SSTA sampling {self.sampling!r} / pad {self.pad!r}: expected importance|similarity, "
                             "zero|repeat")

    def for_grid(self, grid: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
        """(tile, window, topk) for a token grid (t, h, w), by the reference's per-grid rules."""
        if grid[0] == 1:
            vol = math.prod(self.tile)
            if vol not in _IMAGE_TILES:
                raise ValueError(f"SSTA on one frame needs a tile volume in {sorted(_IMAGE_TILES)}, got {vol}")
            return _IMAGE_TILES[vol], (1, 1, 1), self.topk
        return self.tile, self.window, self.topk // 2 if grid[0] <= 31 else self.topk

    def dense_block(self, index: int, depth: int) -> bool:
        """Whether block `index` (0-based) of `depth` runs dense attention (win_type "hybrid")."""
        return self.dense_every > 0 and ((index + 1) % self.dense_every == 0 or index + 1 == depth)


@dataclass(frozen=True)
class SSTALayout:
    """What a sparse call needs besides q, k, v: the first prod(grid) tokens are the image tokens on
    `grid` (t, h, w); the rest are valid text tokens."""

    grid: tuple[int, int, int]
    config: SSTAConfig

    @property
    def n_image(self) -> int:
        return math.prod(self.grid)


# ---------------------------------------------------------------- tiling


def _tiles_of(grid, tile) -> tuple[int, int, int]:
    return tuple(-(-g // t) for g, t in zip(grid, tile))


def to_tiles(x: Tensor, grid, tile, pad: str) -> Tensor:
    """x: [B, H, t*h*w, D] image tokens -> [B, H, N * vol, D] padded to whole tiles, tile-major."""
    b, nh, _, d = x.shape
    x = x.reshape(b, nh, *grid, d)
    nt = _tiles_of(grid, tile)
    for axis, (g, n, s) in enumerate(zip(grid, nt, tile)):
        extra = n * s - g
        if extra:
            dim = 2 + axis
            last = x.narrow(dim, g - 1, 1)
            fill = torch.zeros_like(last) if pad == "zero" else last
            x = torch.cat([x, fill.expand(*[extra if i == dim else -1 for i in range(x.ndim)])], dim=dim)
    x = x.reshape(b, nh, nt[0], tile[0], nt[1], tile[1], nt[2], tile[2], d).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(b, nh, math.prod(nt) * math.prod(tile), d)


def from_tiles(x: Tensor, grid, tile) -> Tensor:
    """The inverse of `to_tiles` (padding cut): [B, H, N * vol, D] -> [B, H, t*h*w, D]."""
    b, nh, _, d = x.shape
    nt = _tiles_of(grid, tile)
    x = x.reshape(b, nh, *nt, *tile, d).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    x = x.reshape(b, nh, nt[0] * tile[0], nt[1] * tile[1], nt[2] * tile[2], d)
    return x[:, :, :grid[0], :grid[1], :grid[2]].reshape(b, nh, -1, d)


# ---------------------------------------------------------------- the tile mask


def window_mask(n_tiles: tuple[int, int, int], window: tuple[int, int, int], device=None) -> Tensor:
    """[N, N] bool: query tile i attends key tile j when j is within window // 2 of i's window centre
    on every axis, the centre clamped so the window stays inside the grid (the reference's STA)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in n_tiles), indexing="ij"), -1)
    coords = coords.reshape(-1, 3)  # [N, 3] tile coordinates, raster order
    half = torch.tensor(window, device=device) // 2
    top = torch.tensor(n_tiles, device=device) - 1 - half
    centre = torch.minimum(torch.maximum(coords, half), top)  # numpy.clip's order: lo first, then hi
    return ((centre[:, None, :] - coords[None, :, :]).abs() <= half).all(-1)


def topk_mask(q_tiles: Tensor, k_tiles: Tensor, vol: int, topk: int, cfg: SSTAConfig) -> Tensor:
    """[B, H or 1, N, N] bool: the `topk` key tiles each query tile selects, from tile-mean q and k.
    q_tiles, k_tiles: [B, H, N * vol, D] (tiled, padded)."""
    b, nh, s, d = k_tiles.shape
    qm = q_tiles.reshape(b, nh, s // vol, vol, d).mean(3).float()  # the mean in the input dtype, then fp32
    km = k_tiles.reshape(b, nh, s // vol, vol, d).mean(3).float()
    if cfg.share_heads:
        qm, km = qm.mean(1, keepdim=True), km.mean(1, keepdim=True)
    if cfg.sampling == "importance":
        qn, kn = qm / qm.norm(dim=-1, keepdim=True), km / km.norm(dim=-1, keepdim=True)
        sim = (qn @ kn.transpose(-1, -2) + 1) / 2  # [B, h, N, N]
        n = kn.shape[2]
        pair = (kn @ kn.transpose(-1, -2) + 1) / 2
        others = (pair.sum(-2) - pair.diagonal(dim1=-2, dim2=-1)) / max(n - 1, 1)  # key j: mean over i != j
        score = cfg.lam * sim - (1 - cfg.lam) * others[:, :, None, :]
    else:
        score = qm @ km.transpose(-1, -2)
    idx = score.topk(min(topk, score.shape[-1]), dim=-1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True)


def tile_mask(q_tiles: Tensor, k_tiles: Tensor, layout: SSTALayout) -> Tensor:
    """[B, H or 1, N, N] bool: window | top-k, for tiled q, k [B, H, N * vol, D]."""
    tile, window, topk = layout.config.for_grid(layout.grid)
    n_tiles = _tiles_of(layout.grid, tile)
    sel = topk_mask(q_tiles, k_tiles, math.prod(tile), topk, layout.config)
    return sel | window_mask(n_tiles, window, q_tiles.device)


def _split(q: Tensor, k: Tensor, v: Tensor, layout: SSTALayout):
    """[B, L, H, D] -> tiled image q, k, v [B, H, N*vol, D], text q, k, v [B, H, Lt, D], the tile."""
    tile, _, _ = layout.config.for_grid(layout.grid)
    n = layout.n_image
    if q.shape[1] < n or k.shape[1] != q.shape[1]:
        raise ValueError(f"SSTA: q, k, v must hold the {n} image tokens of grid {layout.grid} then the same text "
                         f"tokens, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    img = [to_tiles(t[:, :n].transpose(1, 2), layout.grid, tile, layout.config.pad) for t in (q, k, v)]
    txt = [t[:, n:].transpose(1, 2) for t in (q, k, v)]
    return img, txt, tile


def _join(o_img: Tensor, o_txt: Tensor, layout: SSTALayout, tile, dtype) -> Tensor:
    # o_img [B, H, N*vol, D] tiled, o_txt [B, H, Lt, D] -> [B, L, H, D]
    return torch.cat([from_tiles(o_img, layout.grid, tile), o_txt], 2).transpose(1, 2).to(dtype)


# ---------------------------------------------------------------- the reference


def ssta_reference(q: Tensor, k: Tensor, v: Tensor, layout: SSTALayout) -> Tensor:
    """SSTA written out tile by tile, fp32 softmax: q, k, v [B, L, H, D] -> [B, L, H, D] (dtype of q)."""
    (qi, ki, vi), (qt, kt, vt), tile = _split(q, k, v, layout)
    mask = tile_mask(qi, ki, layout)
    vol, scale = math.prod(tile), 1.0 / math.sqrt(q.shape[-1])
    b, nh, s, d = qi.shape
    n = s // vol
    ki_t, vi_t = ki.float().reshape(b, nh, n, vol, d), vi.float().reshape(b, nh, n, vol, d)
    out_img = torch.empty(b, nh, n, vol, d, device=q.device)
    for bi in range(b):
        for h in range(nh):
            for i in range(n):
                sel = mask[bi, h % mask.shape[1], i].nonzero()[:, 0]  # the key tiles query tile i attends
                keys = torch.cat([ki_t[bi, h, sel].reshape(-1, d), kt[bi, h].float()])
                vals = torch.cat([vi_t[bi, h, sel].reshape(-1, d), vt[bi, h].float()])
                p = (qi[bi, h, i * vol:(i + 1) * vol].float() @ keys.T * scale).softmax(-1)
                out_img[bi, h, i] = p @ vals
    keys, vals = torch.cat([ki, kt], 2).float(), torch.cat([vi, vt], 2).float()  # text queries: every key
    out_txt = ((qt.float() @ keys.transpose(-1, -2)) * scale).softmax(-1) @ vals
    return _join(out_img.reshape(b, nh, s, d), out_txt, layout, tile, q.dtype)


# ---------------------------------------------------------------- the FlexAttention path


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    """flex_attention compiled once per process (the fused kernel; eager flex is the unfused math).
    Shapes dynamic after the first change (torch's default): the text length differs between prompts
    and CFG branches, and a fixed-shape cache would run out of recompiles into the unfused form. A new
    mask_mod closure over new tensors of the same shapes does not recompile (checked on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def block_mask(mask: Tensor, n_image: int, n_text: int, vol: int, heads: int):
    """The FlexAttention BlockMask of a tile mask [B, H or 1, N, N] over [N*vol image tokens, n_text text]."""
    from torch.nn.attention.flex_attention import BlockMask

    b, n = mask.shape[0], mask.shape[-1]
    bs = 128 if vol % 128 == 0 else vol
    sub, seq = vol // bs, n * vol + n_text
    nb = -(-seq // bs)
    m = mask.expand(b, heads, n, n)
    dense = torch.ones(b, heads, nb, nb, dtype=torch.bool, device=mask.device)
    dense[:, :, :n * sub, :n * sub] = m.repeat_interleave(sub, 2).repeat_interleave(sub, 3)
    full = dense.clone()
    if seq % bs:  # the last text block is partial: its blocks run the mask_mod (positions past seq masked)
        full[:, :, -1, :] = False
        full[:, :, :, -1] = False
    partial = dense & ~full

    def ordered(d: Tensor):
        return d.sum(-1, dtype=torch.int32), torch.argsort(d.int(), dim=-1, descending=True, stable=True).int()

    def mask_mod(bi, h, qi, ki):
        img = m[bi, h, torch.clamp(qi // vol, max=n - 1), torch.clamp(ki // vol, max=n - 1)]
        return (qi >= n_image) | (ki >= n_image) | img

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(seq, seq))


def ssta_flex(q: Tensor, k: Tensor, v: Tensor, layout: SSTALayout) -> Tensor:
    """SSTA through FlexAttention: q, k, v [B, L, H, D] -> [B, L, H, D]."""
    from torch.nn.attention.flex_attention import flex_attention

    (qi, ki, vi), (qt, kt, vt), tile = _split(q, k, v, layout)
    vol = math.prod(tile)
    bm = block_mask(tile_mask(qi, ki, layout), qi.shape[2], qt.shape[2], vol, q.shape[2])
    args = torch.cat([qi, qt], 2), torch.cat([ki, kt], 2), torch.cat([vi, vt], 2)
    if q.is_cuda:
        out = _compiled_flex()(*args, block_mask=bm)
    else:  # the unfused form on purpose (see the module docstring): torch's advice to compile is not for us
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(*args, block_mask=bm)
    return _join(out[:, :, :qi.shape[2]], out[:, :, qi.shape[2]:], layout, tile, q.dtype)


def ssta_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """What the "ssta" backend runs where the caller gives no layout (encoders, the text refiner): SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
