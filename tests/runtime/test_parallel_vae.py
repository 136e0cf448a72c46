"""Parallel VAE decode (lightx2v.runtime.parallel.vae) over 2 gloo ranks (started once for the module),
tiny random Wan2.1 / Wan2.2 VAEs: the split; equal to the tiled decode where the split is its tile grid;
the error against the whole decode, bounded as tests/models/test_vae_tiling.py bounds the tiled one."""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import InputError
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae_tiling import VAETiling
from lightx2v.runtime.parallel.vae import decode_parallel, decode_vae_parallel, split_grid
from tests.runtime.parallel_harness import RankPool


def _vae(kind: str):
    if kind == "wan2.1":
        from lightx2v.models.wan.vae import WanVAE, tiny_vae_config

        return randomize_(WanVAE(tiny_vae_config()), seed=0).eval()
    from lightx2v.models.wan.vae22 import Wan22VAE, tiny_vae22_config

    return randomize_(Wan22VAE(tiny_vae22_config()), seed=0).eval()


def _z(channels: int, t: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, channels, t, h, w, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The references decode with one thread, as the ranks do: on two cores shared with the ranks
    (and other work) more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


# ---------------------------------------------------------------- the split, one process


def test_split_is_a_tile_grid_with_one_piece_per_rank():
    g = split_grid(6, 4, 2, 1)  # the tiled decode's rows for a 4-latent tile, stride 3
    assert (g.rows, g.cols, g.overlap) == (((0, 4), (3, 6)), ((0, 4),), 1)
    assert split_grid(4, 6, 2, 1).cols == ((0, 4), (3, 6))       # wider than high: columns
    g = split_grid(60, 104, 2, 8)                                 # 832x480 Wan2.1: 60x60 beats 38x104
    assert (g.rows, g.cols) == (((0, 60),), ((0, 60), (52, 104)))
    g = split_grid(60, 104, 4, 8)                                 # 60x34 beats 38x60 (2x2) and 23x104
    assert g.cols == ((0, 34), (26, 60), (52, 86), (78, 104)) and len(g.rows) == 1
    assert split_grid(60, 104, 4, 8, grid=(4, 1)).rows == ((0, 23), (15, 38), (30, 53), (45, 60))
    with pytest.raises(InputError, match="cannot be cut into 32 pieces"):
        split_grid(6, 4, 32, 1)
    with pytest.raises(InputError, match="overlap 0"):
        split_grid(6, 4, 2, 0)
    with pytest.raises(InputError, match="rows x columns = 2"):
        split_grid(6, 4, 2, 1, grid=(2, 2))


def test_a_single_process_decode_is_the_whole_decode():
    vae = _vae("wan2.1")
    z = _z(16, 2, 4, 4)
    assert torch.equal(decode_vae_parallel(vae, z, None, 8), vae.decode(z))


# ---------------------------------------------------------------- 2 gloo ranks


def _decode_on_rank(kind: str, z: torch.Tensor, overlap_px: int, all_ranks: bool = False):
    return decode_vae_parallel(_vae(kind), z, None, overlap_px, all_ranks=all_ranks)


@pytest.mark.parametrize("kind, tiling, shape", [
    ("wan2.1", VAETiling(32, 8), (16, 2, 6, 4)),    # rows (0,4),(3,6): the tiled decode's grid
    ("wan2.1", VAETiling(32, 8), (16, 2, 4, 6)),    # columns
    ("wan2.2", VAETiling(64, 16), (48, 2, 6, 4)),   # the patchifying VAE: blended before unpatchify
])
def test_two_ranks_equal_the_tiled_decode_on_its_grid(ranks, kind, tiling, shape):
    vae = _vae(kind)
    z = _z(*shape)
    got = ranks.run(_decode_on_rank, kind, z, tiling.overlap)
    assert got[1] is None
    want = vae.set_tiling(tiling).decode(z)
    assert got[0].shape == want.shape and got[0].dtype == torch.float32
    assert ((want.abs() < 0.99).float().mean() > 0.2).item()  # not a comparison of clamps
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)
    whole = vae.set_tiling(None).decode(z)
    assert _rel(got[0], whole) > 1e-3  # a split decode is not the whole one


def test_all_ranks_get_the_video(ranks):
    z = _z(16, 1, 6, 4)
    a, b = ranks.run(_decode_on_rank, "wan2.1", z, 8, True)
    assert a is not None and torch.equal(a, b)


def _decode_fn_on_rank(z: torch.Tensor, overlap: int):
    """The generic form: decode_fn = the VAE's own decode (clamped pixels), no finish."""
    return decode_parallel(_vae("wan2.1").decode, z, None, overlap)


def test_error_against_the_whole_decode_is_bounded(ranks):
    """As the tiled decode's bound (tests/models/test_vae_tiling.py): random weights are a worst case
    (a random decoder's receptive field reaches far past a piece). 16x16 latent over 2 ranks: the
    error falls with the overlap and stays under the tiled decode's 0.15."""
    vae = _vae("wan2.1")
    z = _z(16, 1, 16, 16)
    whole = vae.decode(z)
    errs = {}
    for px in (16, 48):
        got, none = ranks.run(_decode_on_rank, "wan2.1", z, px)
        assert none is None and got.shape == whole.shape
        errs[px] = _rel(got, whole)
    clamped, _ = ranks.run(_decode_fn_on_rank, z, 6)
    assert 0 < errs[48] < errs[16] < 0.15
    assert 0 < _rel(clamped, whole) < 0.15
    print(f"relative L2 vs the whole decode: overlap 16 px {errs[16]:.4f}, 48 px {errs[48]:.4f}, "
          f"clamped pieces (48 px) {_rel(clamped, whole):.4f}")


def _bad_decode_on_rank():
    import torch.distributed as dist

    # rank 1's decoder gives another channel count: refused on both ranks before the gather
    fn = (lambda z: torch.zeros(1, 3 + dist.get_rank(), 1, z.shape[3] * 8, z.shape[4] * 8))
    return decode_parallel(fn, torch.zeros(1, 16, 1, 6, 4), None, 1)


def test_inconsistent_pieces_are_refused_on_every_rank(ranks):
    with pytest.raises(InputError, match=r"same B, C', F and s on every rank; got .*\[\(1, 3, 1, 8\), \(1, 4, 1, 8\)\]"):
        ranks.run(_bad_decode_on_rank)
