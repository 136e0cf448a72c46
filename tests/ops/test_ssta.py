"""SSTA (lightx2v.ops.ssta): the tile mask's parts checked by hand, the tile-by-tile reference against an
independent dense masked softmax built from the same tile mask, the FlexAttention path against the
reference (CPU: its unfused form), its BlockMask, and the backend at the dispatch point."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightx2v.ops.attention import get_backend, resolve_attention
from lightx2v.ops.ssta import (
    SSTAConfig, SSTALayout, block_mask, from_tiles, ssta_flex, ssta_reference, tile_mask, to_tiles, topk_mask,
    window_mask,
)


def _qkv(b, n, h=2, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, h, d, generator=g).to(dtype) for _ in range(3)]


def _dense(q, k, v, layout: SSTALayout) -> torch.Tensor:
    """Independent: the padded grid in raster order (F.pad), each token's tile id by arithmetic, the
    token mask read off the library's tile mask, one float64 masked softmax, the padding rows cut."""
    cfg, grid = layout.config, layout.grid
    tile, _, _ = cfg.for_grid(grid)
    n = math.prod(grid)
    qt, kt = (to_tiles(t[:, :n].transpose(1, 2), grid, tile, cfg.pad) for t in (q, k))
    tm = tile_mask(qt, kt, layout)  # the same tile mask [B, H or 1, N, N]
    b, _, nh, d = q.shape
    nt = [-(-g // s) for g, s in zip(grid, tile)]
    padded = [a * s for a, s in zip(nt, tile)]

    def grid_pad(t):  # [B, n, H, D] -> [B, H, prod(padded), D]
        x = t[:, :n].permute(0, 2, 3, 1).reshape(b * nh, d, *grid)
        x = F.pad(x, [0, padded[2] - grid[2], 0, padded[1] - grid[1], 0, padded[0] - grid[0]],
                  mode="constant" if cfg.pad == "zero" else "replicate")
        return x.reshape(b, nh, d, -1).transpose(-1, -2)

    tt, hh, ww = torch.meshgrid(*(torch.arange(p) for p in padded), indexing="ij")
    tid = ((tt // tile[0]) * nt[1] * nt[2] + (hh // tile[1]) * nt[2] + ww // tile[2]).flatten()
    li, lt = tid.numel(), q.shape[1] - n
    mask = torch.ones(b, nh, li + lt, li + lt, dtype=torch.bool)
    mask[:, :, :li, :li] = tm.expand(b, nh, -1, -1)[:, :, tid][:, :, :, tid]
    qq, kk, vv = (torch.cat([grid_pad(t), t[:, n:].transpose(1, 2)], 2).double() for t in (q, k, v))
    s = (qq @ kk.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, float("-inf"))
    out = s.softmax(-1) @ vv  # [B, H, li + lt, D]
    keep = ((tt < grid[0]) & (hh < grid[1]) & (ww < grid[2])).flatten()
    return torch.cat([out[:, :, :li][:, :, keep], out[:, :, li:]], 2).transpose(1, 2)


# ---------------------------------------------------------------- the mask's parts, by hand


def test_window_is_clamped_into_the_grid() -> None:
    m = window_mask((1, 1, 5), (1, 1, 3))
    want = [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert m.int().tolist() == want
    assert window_mask((1, 1, 1), (3, 3, 3)).tolist() == [[True]]  # a window wider than the grid: all
    assert window_mask((2, 2, 2), (3, 3, 3)).all()
    m3 = window_mask((3, 1, 4), (1, 1, 3))  # another frame is never in a window one tile deep
    assert not m3[0, 4:].any() and m3[0, :3].all()


def test_topk_importance_and_similarity_by_hand() -> None:
    # one token per tile: the tile means are the tokens. q = key tile 2's direction.
    k = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]])[None, None]  # [1, 1, 4, 2]
    q = torch.tensor([[0.1, 1.0]])[None, None].expand(1, 1, 4, 2)
    pick = lambda cfg, t: topk_mask(q, k, 1, t, cfg)[0, 0, 0].nonzero()[:, 0].tolist()  # noqa: E731
    assert pick(SSTAConfig(lam=1.0), 1) == [2]  # most similar
    # lam = 0: least redundant key (lowest mean cosine to the other keys): tile 3 points away from 0 and 1
    assert pick(SSTAConfig(lam=0.0), 1) == [3]
    assert pick(SSTAConfig(sampling="similarity"), 2) == [1, 2]  # q . k: 0.19, 1.0 (not normalised)
    assert topk_mask(q, k, 1, 99, SSTAConfig()).all()  # top-k past the tile count: every tile


def test_per_grid_rules_are_the_references() -> None:
    cfg = SSTAConfig()
    assert cfg.for_grid((31, 30, 53)) == ((6, 8, 8), (3, 3, 3), 32)  # 121 frames: top-k halved
    assert cfg.for_grid((32, 30, 53)) == ((6, 8, 8), (3, 3, 3), 64)
    assert cfg.for_grid((1, 30, 53)) == ((1, 16, 24), (1, 1, 1), 64)  # one frame: the image tile, no window
    with pytest.raises(ValueError, match="tile volume"):
        SSTAConfig(tile=(2, 2, 2)).for_grid((1, 4, 4))
    hybrid = SSTAConfig(dense_every=3)
    assert [i for i in range(8) if hybrid.dense_block(i, 8)] == [2, 5, 7]
    assert not any(cfg.dense_block(i, 8) for i in range(8))


def test_tiles_round_trip_and_order() -> None:
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 1, 30, 1)  # grid (2, 3, 5), tile (1, 2, 2)
    t = to_tiles(x, (2, 3, 5), (1, 2, 2), "zero")
    assert t.shape == (1, 1, 2 * 2 * 3 * 4, 1)
    assert t[0, 0, :4, 0].tolist() == [0, 1, 5, 6]  # tile 0: rows 0-1, columns 0-1 of frame 0
    assert t[0, 0, 8:12, 0].tolist() == [4, 0, 9, 0]  # tile 2: column 4 and a zero-padded column
    assert torch.equal(from_tiles(t, (2, 3, 5), (1, 2, 2)), x)
    r = to_tiles(x, (2, 3, 5), (1, 2, 2), "repeat")
    assert r[0, 0, 8:12, 0].tolist() == [4, 4, 9, 9]


# ---------------------------------------------------------------- reference vs the independent formulation

CASES = [  # grid, tile, window, topk, text, pad, share, sampling
    ((2, 4, 4), (1, 2, 2), (1, 3, 3), 2, 3, "zero", False, "importance"),
    ((3, 5, 6), (2, 2, 4), (1, 1, 1), 2, 4, "zero", False, "importance"),   # padding on every axis
    ((3, 5, 6), (2, 2, 4), (3, 1, 1), 1, 0, "repeat", True, "importance"),  # no text, heads share a mask
    ((2, 3, 4), (1, 2, 2), (1, 1, 3), 3, 5, "zero", False, "similarity"),
]


@pytest.mark.parametrize("grid,tile,window,topk,text,pad,share,sampling", CASES)
def test_reference_equals_dense_masked_softmax(grid, tile, window, topk, text, pad, share, sampling) -> None:
    cfg = SSTAConfig(tile=tile, window=window, topk=2 * topk, pad=pad, share_heads=share, sampling=sampling)
    layout = SSTALayout(grid, cfg)  # <= 31 frames: top-k halved to `topk`
    q, k, v = _qkv(2, math.prod(grid) + text, seed=len(grid) + text)
    got = ssta_reference(q, k, v, layout)
    want = _dense(q, k, v, layout)
    assert got.shape == q.shape
    assert (got.double() - want).abs().max() < 1e-5
    # the mask is sparse here: SSTA is not dense attention
    dense = get_backend("reference")(q, k, v)
    assert (got - dense).abs().max() > 1e-3


def test_every_tile_selected_on_whole_tiles_is_dense_attention() -> None:
    layout = SSTALayout((2, 4, 4), SSTAConfig(tile=(1, 2, 2), window=(1, 1, 1), topk=99))
    q, k, v = _qkv(1, 32 + 3, seed=4)
    assert (ssta_reference(q, k, v, layout) - get_backend("reference")(q, k, v)).abs().max() < 1e-5


# ---------------------------------------------------------------- the FlexAttention path


@pytest.mark.parametrize("case", [1, 2])
def test_flex_matches_reference_on_cpu(case) -> None:
    grid, tile, window, topk, text, pad, share, sampling = CASES[case]
    layout = SSTALayout(grid, SSTAConfig(tile=tile, window=window, topk=2 * topk, pad=pad, share_heads=share,
                                         sampling=sampling))
    q, k, v = _qkv(2, math.prod(grid) + text, seed=7)
    ref = ssta_reference(q, k, v, layout)
    out = ssta_flex(q, k, v, layout)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() < 1e-5


def test_block_mask_is_the_tile_mask_in_128_token_blocks() -> None:
    # a tile of 256 tokens: two 128-token blocks each; 150 text tokens: the last block partial
    m = torch.tensor([[[[1, 0, 1], [0, 1, 0], [1, 1, 1]]]], dtype=torch.bool)
    bm = block_mask(m, 3 * 256, 150, 256, heads=2)
    assert bm.BLOCK_SIZE == (128, 128)
    dense = bm.to_dense()[0, 0].bool()  # [8, 8] blocks: 6 image + 2 text
    want = torch.ones(8, 8, dtype=torch.bool)
    want[:6, :6] = m[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(dense, want)
    first = torch.arange(8) < bm.full_kv_num_blocks[..., None]  # the first n indices of a row are its blocks
    full = torch.zeros(1, 2, 8, 8, dtype=torch.bool).scatter_(-1, bm.full_kv_indices.long(), first)
    assert not full[0, 0, -1].any() and not full[0, 0, :, -1].any()  # the partial text block runs the mask_mod
    assert torch.equal(full[0, 0, :6, :6], want[:6, :6])


def test_backend_at_the_dispatch_point() -> None:
    b = resolve_attention("ssta", "cpu", torch.float32)
    assert b.takes_layout and not get_backend("torch_sdpa").takes_layout
    layout = SSTALayout((2, 4, 4), SSTAConfig(tile=(1, 2, 2), window=(1, 1, 1), topk=2))
    q, k, v = _qkv(1, 32 + 3, seed=9)
    ref = get_backend("reference")(q, k, v)
    assert (b(q, k, v) - ref).abs().max() < 1e-5  # no layout: dense (SDPA)
    assert (b(q, k, v, layout=layout) - ssta_reference(q, k, v, layout)).abs().max() < 1e-5
    assert (get_backend("torch_sdpa")(q, k, v, layout=layout) - ref).abs().max() < 1e-5  # dense ignores it
    with pytest.raises(ValueError, match="image tokens"):
        b(q[:, :20], k[:, :20], v[:, :20], layout=layout)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flex_matches_reference_on_gpu(dtype) -> None:
    layout = SSTALayout((7, 12, 20), SSTAConfig(topk=8))  # 384-token tiles, padding on t and h
    q, k, v = (t.cuda() for t in _qkv(1, 7 * 12 * 20 + 150, h=2, d=128, seed=3, dtype=dtype))
    ref = ssta_reference(q, k, v, layout).float()
    out = ssta_flex(q, k, v, layout).float()
    assert (out - ref).abs().max() <= (2e-2 if dtype == torch.bfloat16 else 1e-3) * ref.abs().max()
