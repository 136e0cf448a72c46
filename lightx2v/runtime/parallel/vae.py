"""Parallel VAE decode: the latent split spatially across the ranks of a group, pieces blended on rank 0.

Design. The latent frame `[h, w]` is cut into one piece per rank, a grid of rows x columns
(`split_grid`: the factorisation of N whose largest piece, overlap included, is smallest; ties split
rows). Each rank owns a near-equal part (starts i*h//n), and its piece extends `overlap` latent rows
(columns) past its part into the next one, exactly the shape of a `TileGrid` of the tiled decode
(lightx2v.models.wan.vae_tiling): piece i+1 starts where piece i's extension starts. Rank r decodes
piece r (raster order) with `decode_fn`, through the whole time loop; the pieces are padded to one
size and gathered on rank 0 (`dist.gather`; `all_gather` with `all_ranks=True`), which blends them
with the tiled decode's own `Blender` (linear ramps over the overlap, in raster order) and applies
`finish`. So when the split equals the tile grid, the result is the tiled decode's.

Two ways to call it:
* `decode_vae_parallel(vae, latents, group)` for a VAE whose tiled decode blends the decoder's raw
  output (a Wan VAE: Wan2.1, Wan2.2, Qwen-Image's; HunyuanVideo-1.5's): the pieces are that raw output
  and what the VAE runs after its blend (Wan: `_to_pixels`, unpatchify and clamp; HunyuanVideo-1.5: the
  clamp) runs once on the blended canvas, as its tiled decode does (`raw_decoder`: the one per-VAE
  seam, (decode_fn, finish, pixels per latent pixel): a Wan VAE's parts here, another VAE's `raw_decoder()`
  method; the overlap defaults to the VAE's tiling's);
* `decode_parallel(decode_fn, latents, group, overlap, finish=None)` for any decoder
  `latents [B, C, T, h, w] -> [B, C', F, h*s, w*s]` (s: pixels per latent pixel, read from the shapes).
  With `decode_fn = vae.decode` the blend is of clamped pixels: close to, not equal to, the tiled decode.

Every rank must pass the same latents (all ranks join the collectives). An error inside `decode_fn` on
one rank leaves the others waiting in the gather: stopping them is the launcher's job. Memory on
rank 0: the N padded pieces and the canvas. tests/runtime/test_parallel_vae.py compares it with the
tiled and the whole decode of tiny random Wan2.1 / Wan2.2 / HunyuanVideo-1.5 VAEs over 2 gloo ranks.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from lightx2v.errors import InputError
from lightx2v.models.wan.vae_tiling import Blender, TileGrid, VAETiling

__all__ = ["decode_parallel", "decode_vae_parallel", "has_raw_decoder", "raw_decoder", "split_grid"]

Decode = Callable[[Tensor], Tensor]


def _spans(size: int, n: int, overlap: int) -> tuple[tuple[int, int], ...] | None:
    """n pieces along a side of `size`: part i is [i*size//n, (i+1)*size//n), its piece reaches
    `overlap` further (the last one: to the end). None when a part is smaller than the overlap (a
    pixel would be in three pieces)."""
    starts = [i * size // n for i in range(n)] + [size]
    if min(b - a for a, b in zip(starts, starts[1:])) < max(overlap, 1):
        return None
    return tuple((starts[i], min(starts[i + 1] + overlap, size) if i + 1 < n else size) for i in range(n))


def split_grid(height: int, width: int, n: int, overlap: int, grid: tuple[int, int] | None = None) -> TileGrid:
    """One piece per rank of a latent frame height x width: a TileGrid of `grid` = (rows, columns)
    pieces, or the factorisation of n with the smallest largest piece (ties: more rows)."""
    if not isinstance(overlap, int) or overlap < 1:
        raise InputError(f"parallel VAE decode: overlap {overlap!r} latent pixels; expected an integer >= 1")
    shapes = [grid] if grid is not None else [(r, n // r) for r in range(n, 0, -1) if n % r == 0]
    best = None
    for rows, cols in shapes:
        if rows * cols != n:
            raise InputError(f"parallel VAE decode: a grid of {rows}x{cols} pieces for {n} ranks; expected rows x columns = {n}")
        rs, cs = _spans(height, rows, overlap), _spans(width, cols, overlap)
        if rs is None or cs is None:
            continue
        size = max(b - a for a, b in rs) * max(b - a for a, b in cs)
        if best is None or size < best[0]:
            best = (size, TileGrid(rs, cs, overlap))
    if best is None:
        raise InputError(f"parallel VAE decode: a latent frame of {height}x{width} cannot be cut into {n} pieces "
                         f"{'of ' + 'x'.join(map(str, grid)) + ' ' if grid else ''}with parts of at least the "
                         f"overlap ({overlap} latent pixels); use fewer ranks or a smaller overlap")
    return best[1]


def _group_size(group: dist.ProcessGroup | None) -> int:
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _check_pieces(piece: Tensor, h: int, w: int, group, n: int) -> int:
    """Pixels per latent pixel of this rank's decoded piece [B, C, F, h*s, w*s]; the same B, C, F and s
    on every rank, else the same InputError on every rank (so none waits in the gather)."""
    s = piece.shape[-2] // h if piece.ndim == 5 and piece.shape[-2] % h == 0 else 0
    if s and (piece.shape[-1] != w * s):
        s = 0
    head = tuple(piece.shape[:3]) if piece.ndim == 5 else (0, 0, 0)
    device = torch.device("cpu") if dist.get_backend(group) == "gloo" else piece.device
    mine = torch.tensor([*head, s], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(every, mine, group=group)
    got = [tuple(t.tolist()) for t in every]
    if any(g[-1] == 0 for g in got) or len(set(got)) > 1:
        raise InputError("parallel VAE decode: decode_fn must turn a latent piece [B, C, T, h, w] into [B, C', F, h*s, w*s] "
                         f"with the same B, C', F and s on every rank; got (B, C', F, s) per rank: {got} (s 0: not h*s, w*s)")
    return s


def decode_parallel(decode_fn: Decode, latents: Tensor, group: dist.ProcessGroup | None, overlap: int = 8, *,
                    grid: tuple[int, int] | None = None, finish: Decode | None = None,
                    all_ranks: bool = False) -> Tensor | None:
    """Decode `latents` [B, C, T, h, w] (the same on every rank) split spatially over the ranks of
    `group` (None: the default group, or one piece without torch.distributed): piece r of
    `split_grid(h, w, N, overlap, grid)` is decoded by rank r with `decode_fn`, the pieces are blended
    on rank 0 as the tiled decode blends its tiles, then `finish(canvas)` (if given). Returns the
    video on rank 0 (on every rank with `all_ranks=True`), None on the others."""
    if latents.ndim != 5:
        raise InputError(f"parallel VAE decode expects latents [B, C, T, h, w], got shape {tuple(latents.shape)}")
    n = _group_size(group)
    if n == 1:
        out = decode_fn(latents)
        return finish(out) if finish is not None else out
    tiles = split_grid(latents.shape[3], latents.shape[4], n, overlap, grid)
    rank = dist.get_rank(group)
    (r0, r1), (c0, c1) = tiles.rows[rank // len(tiles.cols)], tiles.cols[rank % len(tiles.cols)]
    piece = decode_fn(latents[..., r0:r1, c0:c1])  # [B, C', F, (r1-r0)*s, (c1-c0)*s]
    s = _check_pieces(piece, r1 - r0, c1 - c0, group, n)
    mh = max(b - a for a, b in tiles.rows) * s
    mw = max(b - a for a, b in tiles.cols) * s
    padded = piece.new_zeros(*piece.shape[:3], mh, mw)  # gather needs one size on every rank
    padded[..., : piece.shape[-2], : piece.shape[-1]] = piece
    del piece
    if all_ranks:
        pieces = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(pieces, padded, group=group)
    else:
        pieces = [torch.empty_like(padded) for _ in range(n)] if rank == 0 else None
        dist.gather(padded, pieces, dst=dist.get_global_rank(group or dist.group.WORLD, 0), group=group)
    del padded
    if pieces is None:
        return None
    canvas = pieces[0].new_empty(*pieces[0].shape[:3], latents.shape[3] * s, latents.shape[4] * s)
    blender = Blender(tiles, s, canvas)
    for i, (r, c, (a, b), (p, q)) in enumerate(tiles):  # raster order = rank order
        blender.add(r, c, pieces[i][..., : (b - a) * s, : (q - p) * s])
        pieces[i] = None
    return finish(canvas) if finish is not None else canvas


def _wan_raw(vae) -> tuple[Decode, Decode, int]:
    # a Wan VAE (Wan2.1 / Wan2.2 / Qwen-Image's; lightx2v.models.wan.vae_decode.VAEDecode)
    from lightx2v.models.wan.vae import latent_stats
    from lightx2v.models.wan.vae_blocks import CausalCache

    @torch.no_grad()
    def decode_fn(latents: Tensor) -> Tensor:
        # as VAEDecode.decode_chunks before its tiling: pointwise, so a piece of it is it of the piece
        mean, inv_std = latent_stats(vae.config.latents_mean, vae.config.latents_std, latents)
        x = vae.conv2((latents.float() / inv_std + mean).to(vae.conv2.weight.dtype))
        x = x.contiguous(memory_format=torch.channels_last_3d if vae.channels_last else torch.contiguous_format)
        bar = SimpleNamespace(update=lambda *a: None)
        return torch.cat(list(vae._decoded(x, CausalCache(), bar)), dim=2)  # [B, C', F, h*s, w*s]

    return decode_fn, vae._to_pixels, vae.config.scale_factor_spatial


def _raw_kind(vae):
    # which raw decoder (None: unknown): a Wan VAE's decoder parts, or the VAE's own `raw_decoder()`
    # (HunyuanVideo-1.5's). A tiny VAE has neither: its decoded pixels are blended instead.
    if hasattr(vae, "_decoded") and hasattr(vae, "_to_pixels"):
        return _wan_raw
    return (lambda v: v.raw_decoder()) if hasattr(vae, "raw_decoder") else None


def has_raw_decoder(vae) -> bool:
    """Whether `raw_decoder` knows this VAE (else a caller decodes pieces to pixels: `decode_parallel`)."""
    return _raw_kind(vae) is not None


def raw_decoder(vae) -> tuple[Decode, Decode, int]:
    """(decode_fn, finish, scale) of a VAE whose tiled decode blends raw decoder output: decode_fn gives
    the decoder's raw output for the pipeline's latents (denormalised, the decoder; untiled, whatever
    `vae.tiling` says), finish what that VAE runs once on its blended canvas (Wan: `_to_pixels`,
    unpatchify and clamp; HunyuanVideo-1.5: the clamp), scale its pixels per latent pixel (Wan2.1 and
    Qwen-Image 8, Wan2.2 16, HunyuanVideo-1.5 16). One seam for every family; the split, the gather
    and the blend are shared."""
    kind = _raw_kind(vae)
    if kind is None:
        raise InputError(f"parallel VAE decode: {type(vae).__name__} has no raw decoder known to "
                         "lightx2v.runtime.parallel.vae; pass its decode to decode_parallel")
    return kind(vae)


def decode_vae_parallel(vae, latents: Tensor, group: dist.ProcessGroup | None, overlap_px: int | None = None, *,
                        grid: tuple[int, int] | None = None, all_ranks: bool = False) -> Tensor | None:
    """A VAE's decode split over `group` (a Wan VAE, Qwen-Image's, HunyuanVideo-1.5's: `raw_decoder`):
    the pipeline's latents -> video [B, 3, F, H, W] float32 in [-1, 1] on rank 0 (every rank with
    `all_ranks`), None elsewhere. `overlap_px`: the overlap in video pixels, a multiple of the VAE's
    compression (default: its tiling's overlap when it has one, else the tiled decode's default, 64)."""
    decode_fn, finish, scale = raw_decoder(vae)
    if overlap_px is None:
        tiling = getattr(vae, "tiling", None)
        overlap_px = (tiling or VAETiling()).overlap
    if overlap_px % scale:
        raise InputError(f"parallel VAE decode: overlap {overlap_px} px must be a multiple of this VAE's "
                         f"{scale} pixels per latent pixel")
    return decode_parallel(decode_fn, latents, group, overlap_px // scale, grid=grid, finish=finish, all_ranks=all_ranks)
