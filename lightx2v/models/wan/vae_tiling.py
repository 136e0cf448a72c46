"""Spatial tiling of the Wan VAEs' decode and encode: memory bounded by a tile, not by the frame.

Design. The latent grid is cut into overlapping square tiles (`TileGrid`; side and overlap given in
video pixels by `VAETiling`, default 256 / 64 as diffusers' AutoencoderKLWan.enable_tiling: tile 256,
stride 192). A frame no larger than one tile along both sides is not tiled (the plain path, bit-identical).

Order: tile-major. Each tile runs the whole causal time loop (every latent frame, or every 4-frame
encoder chunk) with its own fresh `CausalCache`, then the next tile does. The device thus holds one
tile's working set and one tile's causal history, plus the assembled output (the decoder's output
for the whole video, as an untiled decode holds it too). The other order (every tile inside each
latent frame) would stream frames while decoding, but it must keep every tile's causal history alive
at once: the tiles' histories together are larger than the untiled decoder's (the overlaps count
twice), so it bounds only the transient tensors, not the memory; docs/architecture.md has figures.
So a streamed save (`on_chunk`) still gets every chunk, in order, but only once the last tile is
decoded: with tiling the mp4 encode follows the decode instead of overlapping it.

Grid: tile starts 0, stride, 2*stride, ... as diffusers', stopping at the first tile that reaches the
frame's edge. diffusers also runs the next start when it is still inside the frame: a tile lying
wholly inside the previous one (at 832x480, a 64-pixel-wide column), which adds no pixel, only a tile
with little context blended into the edge; we skip it. Where the grids agree (e.g. 1280x720) the
output equals diffusers' tiled decode (tests/models/test_vae_tiling.py).

Blending, as diffusers': tiles are visited in raster order; the first `overlap` rows of a tile are
a linear ramp from the tile above (already blended) to itself (weight y / overlap on itself), then
its first `overlap` columns likewise from the tile on its left; each tile then owns the region up to
the next tile's start. Only the strips a later tile still blends with are kept. The decode blends
the decoder's raw output (before unpatchify and the clamp to [-1, 1], as diffusers does), the encode
the posterior mean; half-precision values are blended in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from lightx2v.errors import InputError

__all__ = ["TileGrid", "VAETiling", "tile_spans"]


@dataclass(frozen=True)
class VAETiling:
    """Tile side and overlap in video pixels: each a multiple of the VAE's spatial compression (8
    for Wan2.1, 16 for Wan2.2), the overlap at most half the tile (a pixel is in at most two tiles
    along each side)."""

    tile: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.tile, int) and isinstance(self.overlap, int)) or not 0 < self.overlap <= self.tile // 2:
            raise InputError(f"VAE tiling: tile {self.tile!r} px with overlap {self.overlap!r} px; expected "
                             "integers with 0 < overlap <= tile / 2", field="vae_tile_size")

    @classmethod
    def of_size(cls, tile: int) -> "VAETiling":
        """A tile of `tile` pixels overlapping its neighbours by a quarter (diffusers' 256 / 192)."""
        return cls(tile, tile // 4)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def latent(self, scale: int) -> tuple[int, int]:
        """(tile, overlap) in latent pixels for a VAE of `scale` pixels per latent pixel."""
        if self.tile % scale or self.overlap % scale:
            raise InputError(f"VAE tiling: tile {self.tile} px and overlap {self.overlap} px must be multiples of "
                             f"this VAE's {scale} pixels per latent pixel", field="vae_tile_size")
        return self.tile // scale, self.overlap // scale


def tile_spans(size: int, tile: int, stride: int) -> tuple[tuple[int, int], ...]:
    """(start, stop) of the tiles along one side of `size`: starts 0, stride, ..., up to the first
    tile that reaches the end (one span when the side fits in a tile)."""
    spans, start = [], 0
    while True:
        stop = min(start + tile, size)
        spans.append((start, stop))
        if stop == size:
            return tuple(spans)
        start += stride


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one frame in latent pixels: row spans x column spans, and their overlap."""

    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    overlap: int

    @classmethod
    def plan(cls, height: int, width: int, tiling: VAETiling, scale: int) -> "TileGrid | None":
        """The grid for a latent frame of height x width; None when it fits in one tile (untiled)."""
        tile, overlap = tiling.latent(scale)
        if height <= tile and width <= tile:
            return None
        return cls(tile_spans(height, tile, tile - overlap), tile_spans(width, tile, tile - overlap), overlap)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[tuple[int, int, tuple[int, int], tuple[int, int]]]:
        """(row, column, row span, column span) of each tile, in raster order."""
        for r, rs in enumerate(self.rows):
            for c, cs in enumerate(self.cols):
                yield r, c, rs, cs


def _ramp(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """a * (1 - w) + b * w along `dim` (-2 rows, -1 columns), w = i / n for i < n = a.shape[dim]:
    diffusers' blend_v / blend_h weights (float64 ratios, rounded to float32), computed in float32."""
    n = a.shape[dim]
    w = torch.arange(n, dtype=torch.float64) / n
    wb, wa = w.to(torch.float32).to(a.device), (1 - w).to(torch.float32).to(a.device)
    if dim == -2:
        wa, wb = wa[:, None], wb[:, None]
    return a.float() * wa + b.float() * wb


class Blender:
    """Assembles a grid's tiles, added in raster order, onto `canvas` ([..., H*unit, W*unit]); `unit`:
    canvas pixels per latent pixel (decoder output: 8 for both VAEs; encoder output: 1)."""

    def __init__(self, grid: TileGrid, unit: int, canvas: torch.Tensor) -> None:
        self.grid, self.unit, self.canvas = grid, unit, canvas
        self.e = grid.overlap * unit
        self.above: dict[int, torch.Tensor] = {}  # column -> bottom strip of the tile above (blended)
        self.left: torch.Tensor | None = None     # right strip of the tile on the left (blended)

    def add(self, r: int, c: int, tile: torch.Tensor) -> None:
        # tile: [..., h*unit, w*unit], this tile's spans of the grid; blended in place
        e, u, rows, cols = self.e, self.unit, self.grid.rows, self.grid.cols
        if r > 0:
            top = tile[..., :e, :]
            top.copy_(_ramp(self.above.pop(c), top, -2))
        if c > 0:
            head = tile[..., :e]
            head.copy_(_ramp(self.left, head, -1))
        # a tile below or to the right exists only after a full tile (tile_spans), so these strips
        # are exactly the next tiles' first `e` rows / columns
        if r + 1 < len(rows):
            self.above[c] = tile[..., -e:, :].clone()
        self.left = tile[..., -e:].clone() if c + 1 < len(cols) else None
        (r0, _), (c0, _) = rows[r], cols[c]
        h = (rows[r + 1][0] - r0) * u if r + 1 < len(rows) else tile.shape[-2]
        w = (cols[c + 1][0] - c0) * u if c + 1 < len(cols) else tile.shape[-1]
        self.canvas[..., r0 * u : r0 * u + h, c0 * u : c0 * u + w] = tile[..., :h, :w]


def run_tiles(grid: TileGrid, unit: int, run: Callable[[int, int, int, int], torch.Tensor],
              canvas_shape: Callable[[torch.Tensor], tuple[int, ...]]) -> torch.Tensor:
    """Run `run(r0, r1, c0, c1)` (latent spans -> that tile's output) for every tile, tile after tile,
    and blend the outputs onto one canvas of `canvas_shape(first output)`, in its dtype and device."""
    blender = None
    for r, c, (r0, r1), (c0, c1) in grid:
        out = run(r0, r1, c0, c1)
        if blender is None:
            blender = Blender(grid, unit, out.new_empty(canvas_shape(out)))
        blender.add(r, c, out)
        del out  # the next tile's working set replaces this one's
    return blender.canvas
