"""Spatial tiling of the Wan VAEs (lightx2v.models.wan.vae_tiling), tiny random weights, CPU: the grid;
parity with diffusers' tiled_decode / tiled_encode on the same weights (the untiled parity tests'
fixtures); the error against the untiled decode; memory bounded by the tile; streaming, bf16,
channels-last, the compiled decoder; the engine step, the API and the CLI flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightx2v.config import CompileConfig, EngineConfig
from lightx2v.errors import InputError
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae import WanVAE, tiny_vae_config
from lightx2v.models.wan.vae_blocks import CausalCache
from lightx2v.models.wan.vae_tiling import TileGrid, VAETiling, tile_spans

pytest.importorskip("diffusers")
from tests.models.test_wan22_vae import models as wan22_models  # noqa: E402, F401 - fixtures, reused
from tests.models.test_wan_vae import models as wan21_models  # noqa: E402, F401

# 4 latent pixels a tile, stride 3, overlap 1 (8 output pixels): diffusers' enable_tiling(32, 32, 24, 24)
# for Wan2.1, enable_tiling(64, 64, 48, 48) for Wan2.2's decode
SMALL = VAETiling(32, 8)
SMALL22 = VAETiling(64, 16)


def _z(channels: int, t: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, channels, t, h, w, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _diffusers_decode(ref, vae, z: torch.Tensor) -> torch.Tensor:
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return ref.decode(z * std + mean).sample  # as WanPipeline: latents / (1 / std) + mean


def _diffusers_encode(ref, vae, video: torch.Tensor) -> torch.Tensor:
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return (ref.encode(video).latent_dist.mean - mean) * (1.0 / std)


@pytest.fixture
def tiled(request):
    """(diffusers model, ours) of a parity fixture, ours tiled for the test and as it was after it."""
    ref, ours, _ = request.getfixturevalue(request.param)
    yield ref, ours
    ours.set_tiling(None)
    ours.__dict__.pop("_decode_one", None)
    ours.__dict__.pop("_encode_frames", None)
    ref.disable_tiling()


def _count(vae, method: str) -> list:
    """Record the calls of a VAE method (an instance attribute wrapping it; `tiled` removes it)."""
    calls, inner = [], getattr(vae, method)

    def wrapper(*args, **kwargs):
        calls.append(args[-1] if method == "_decode_one" else None)
        return inner(*args, **kwargs)

    object.__setattr__(vae, method, wrapper)
    return calls


# ---------------------------------------------------------------- the grid


def test_tile_spans_follow_diffusers_starts_without_the_redundant_tile():
    assert tile_spans(90, 32, 24) == ((0, 32), (24, 56), (48, 80), (72, 90))  # 720P rows: as diffusers
    assert tile_spans(160, 32, 24)[-2:] == ((120, 152), (144, 160))           # 1280 columns: as diffusers
    # 832 columns: (72, 104) reaches the edge; diffusers also decodes (96, 104), inside the previous tile
    assert tile_spans(104, 32, 24) == ((0, 32), (24, 56), (48, 80), (72, 104))
    assert tile_spans(20, 32, 24) == ((0, 20),)
    assert TileGrid.plan(32, 32, VAETiling(), 8) is None                       # fits in one tile: untiled
    grid = TileGrid.plan(60, 104, VAETiling(), 8)                              # 832x480, Wan2.1
    assert (grid.rows, len(grid), grid.overlap) == (((0, 32), (24, 56), (48, 60)), 12, 8)
    assert TileGrid.plan(30, 52, VAETiling(), 16).cols == ((0, 16), (12, 28), (24, 40), (36, 52))  # Wan2.2


def test_tiling_sizes_are_checked():
    assert VAETiling.of_size(256) == VAETiling(256, 64) and VAETiling().stride == 192
    with pytest.raises(InputError, match="overlap <= tile / 2"):
        VAETiling(128, 96)
    with pytest.raises(InputError, match="multiples of this VAE's 16 pixels"):
        VAETiling(200, 50).latent(16)
    vae = WanVAE(tiny_vae_config())
    with pytest.raises(InputError, match="multiples of this VAE's 8 pixels"):
        vae.set_tiling(VAETiling(100, 20))
    assert vae.tiling is None
    assert EngineConfig(device="cpu", vae_tiling=True, vae_tile_size=192).vae_tile_size == 192
    for bad in (100, 64, 0):
        with pytest.raises(InputError, match="vae_tile_size"):
            EngineConfig(device="cpu", vae_tiling=True, vae_tile_size=bad)


# ---------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("tiled, ours_tiling, sample_tiling", [
    ("wan21_models", SMALL, (32, 32, 24, 24)),
    ("wan22_models", SMALL22, (64, 64, 48, 48)),
], indirect=["tiled"])
def test_tiled_decode_equals_diffusers_tiled_decode(tiled, ours_tiling, sample_tiling):
    ref, ours = tiled
    z = _z(ours.config.z_dim, 2, 6, 8)  # rows (0,4),(3,6); columns (0,4),(3,7),(6,8): diffusers' grid too
    ref.enable_tiling(*sample_tiling)
    want = _diffusers_decode(ref, ours, z)
    calls = _count(ours, "_decode_one")
    got = ours.set_tiling(ours_tiling).decode(z)
    assert len(calls) == 6 * 2  # 6 tiles, each through 2 latent frames
    s = ours.config.scale_factor_spatial
    assert got.shape == want.shape == (1, 3, 5, 6 * s, 8 * s)
    assert ((want.abs() < 0.99).float().mean() > 0.2).item()  # not a comparison of clamps
    # the same tiles, each through the same causal time loop, blended with the same weights
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tiled, ours_tiling, size", [
    ("wan21_models", SMALL, (48, 64)),
    # diffusers cuts Wan2.2's encoder tiles in patchified pixels (half the video's): 32 there = 64 here
    ("wan22_models", SMALL22, (96, 128)),
], indirect=["tiled"])
def test_tiled_encode_equals_diffusers_tiled_encode(tiled, ours_tiling, size):
    ref, ours = tiled
    video = torch.rand(1, 3, 5, *size, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ref.enable_tiling(32, 32, 24, 24)
    want = _diffusers_encode(ref, ours, video)
    calls = _count(ours, "_encode_frames")
    got = ours.set_tiling(ours_tiling).encode(video)
    assert len(calls) == 6  # 6 tiles, each through every time chunk
    assert got.shape == want.shape == (1, ours.config.z_dim, 2, 6, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tiled", ["wan21_models"], indirect=True)
def test_where_diffusers_adds_a_redundant_tile_both_stay_close(tiled):
    """7 latent columns: diffusers decodes (0,4), (3,7) and (6,7), a tile inside the previous one;
    we skip it. The outputs differ only in the last latent column (8 pixels)."""
    ref, ours = tiled
    z = _z(16, 1, 6, 7)
    ref.enable_tiling(32, 32, 24, 24)
    want = _diffusers_decode(ref, ours, z)
    got = ours.set_tiling(SMALL).decode(z)
    torch.testing.assert_close(got[..., :48], want[..., :48], rtol=0, atol=1e-5)
    assert not torch.allclose(got[..., 48:], want[..., 48:], atol=1e-3)


# ---------------------------------------------------------------- against the untiled output


def _vae(kind: str = "wan2.1") -> WanVAE:
    if kind == "wan2.1":
        return randomize_(WanVAE(tiny_vae_config()), seed=0).eval()
    from lightx2v.models.wan.vae22 import Wan22VAE, tiny_vae22_config

    return randomize_(Wan22VAE(tiny_vae22_config()), seed=0).eval()


def test_tiled_decode_error_against_the_untiled_decode():
    """The bound docs/architecture.md states for random weights, a worst case (a random decoder's
    receptive field and its middle attention reach far beyond a tile): relative L2 < 0.15 with
    12-latent-pixel tiles over a 16x16 latent, a quarter overlap (measured 0.12), less with a half
    overlap (0.08); exactly the untiled output when the frame fits in a tile."""
    vae = _vae()
    z = _z(16, 1, 16, 16)
    full = vae.decode(z)
    quarter = vae.set_tiling(VAETiling(96, 24)).decode(z)
    half = vae.set_tiling(VAETiling(96, 48)).decode(z)
    assert 0 < _rel(half, full) < _rel(quarter, full) < 0.15
    assert (half - full).abs().max() < (quarter - full).abs().max() < 1.0
    small = _z(16, 1, 4, 4)  # fits in one tile: the untiled decode, bit for bit
    assert torch.equal(vae.set_tiling(SMALL).decode(small), vae.set_tiling(None).decode(small))


def test_tiled_encode_error_against_the_untiled_encode():
    vae = _vae()
    video = torch.rand(1, 3, 1, 128, 128, generator=torch.Generator().manual_seed(5)) * 2 - 1
    full = vae.encode(video)
    got = vae.set_tiling(VAETiling(96, 24)).encode(video)
    assert got.shape == full.shape == (1, 16, 1, 16, 16)
    assert 0 < _rel(got, full) < 0.15


# ---------------------------------------------------------------- memory, streaming, precision, compile


class _HistoryMeter(CausalCache):
    """A CausalCache that records the largest causal history it held at the start of a chunk (bytes)."""

    peak = 0

    def start_chunk(self) -> None:
        held = sum(f.numel() * f.element_size() for f in self.frames if f is not None)
        self.peak = max(self.peak, held)
        super().start_chunk()


def _decode_peaks(vae: WanVAE, z: torch.Tensor) -> tuple[int, int]:
    """(largest tensor in or out of any decoder conv, in elements; largest causal history, in bytes)."""
    seen = [0]

    def hook(module, args, out):
        seen[0] = max(seen[0], out.numel(), *(a.numel() for a in args if isinstance(a, torch.Tensor)))

    convs = [m for m in vae.decoder.modules() if isinstance(m, (nn.Conv3d, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    cache = _HistoryMeter()
    try:
        vae.decode(z, cache=cache)
    finally:
        for h in handles:
            h.remove()
    return seen[0], cache.peak


def test_decode_memory_is_bounded_by_the_tile_not_the_frame():
    vae = _vae()
    one_tile = _decode_peaks(vae, _z(16, 2, 4, 4))  # 4 latent pixels: SMALL's tile, untiled
    vae.set_tiling(SMALL)
    small, large = _decode_peaks(vae, _z(16, 2, 6, 6)), _decode_peaks(vae, _z(16, 2, 8, 8))
    # the largest conv tensor and the causal history: one tile's, at 6x6 and at 8x8 (1.8x the pixels)
    assert small == large == one_tile
    untiled = _decode_peaks(vae.set_tiling(None), _z(16, 2, 8, 8))
    assert untiled[0] == 4 * one_tile[0] and untiled[1] == 4 * one_tile[1]  # untiled: grows with the frame


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2"])
def test_streamed_chunks_of_a_tiled_decode(kind):
    vae = _vae(kind).set_tiling(SMALL if kind == "wan2.1" else SMALL22)
    z = _z(vae.config.z_dim, 2, 6, 6)
    seen = []
    video = vae.decode(z, on_chunk=seen.append)
    assert [c.shape[2] for c in seen] == [1, 4]
    assert torch.equal(torch.cat(seen, dim=2), video) and video.shape[-2:] == (6 * vae.config.scale_factor_spatial,) * 2
    assert seen[1].data_ptr() == video[:, :, 1:].data_ptr()  # the chunks are the video's memory: no second copy
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(torch.cat(list(vae.decode_chunks(z)), dim=2), video)


def test_tiled_decode_in_bf16_and_channels_last():
    vae = _vae().set_tiling(SMALL)
    z = _z(16, 1, 6, 6)
    ref = vae.decode(z)
    vae.set_memory_format(True)
    torch.testing.assert_close(vae.decode(z), ref, rtol=0, atol=1e-5)
    fast = vae.to(torch.bfloat16).decode(z.bfloat16())
    assert fast.dtype == torch.float32 and 0 < _rel(fast, ref) < 3e-2


def test_compiled_decoder_compiles_once_for_tiles_of_one_size():
    """Tiles of one size reuse the graphs the first tile compiled; edge tiles of another size add
    graphs once (dynamo then marks the sizes dynamic), not per tile."""
    from lightx2v.runtime.vae_compile import compile_vae

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    vae = _vae()
    torch._dynamo.reset()
    try:
        compile_vae(vae, CompileConfig(enabled=True, vae=True, backend=counting))
        ref = vae.set_tiling(SMALL).decode(_z(16, 1, 4, 4))  # one 4x4 tile: untiled
        first = len(graphs)
        tiled = vae.decode(_z(16, 1, 7, 7))                  # 4 tiles, all 4x4: no new graph
        assert first > 0 and len(graphs) == first
        vae.decode(_z(16, 1, 6, 6))                          # 4x3, 3x4, 3x3 edge tiles: once more
        assert first < len(graphs) <= 2 * first
    finally:
        torch._dynamo.reset()
    eager = _vae().set_tiling(SMALL)
    torch.testing.assert_close(ref, eager.decode(_z(16, 1, 4, 4)), rtol=0, atol=1e-5)
    torch.testing.assert_close(tiled, eager.decode(_z(16, 1, 7, 7)), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the engine step, the API, the CLI


def test_engine_tiles_the_vae_and_the_streamed_save_gets_every_frame(tiny_official_dir, tmp_path):
    from lightx2v import LightX2V
    from lightx2v.io.video import probe_mp4

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", vae_tiling=True,
                                    vae_tile_size=128, progress=False)
    vae = pipe.pipeline.vae
    assert vae.tiling == VAETiling(128, 32)
    assert "vae: tiled decode/encode, tile 128 px, overlap 32 px" in pipe.pipeline.engine_log
    vae.set_tiling(SMALL)  # small tiles, so that a small (fast) frame is tiled
    kw = dict(prompt="a red fox in the snow", height=48, width=64, num_frames=5, num_inference_steps=2, seed=3)
    calls = _count(vae, "_decode_one")
    tiled = pipe.generate(**kw, output_type="np")
    assert len(calls) == 6 * 2  # 6x8 latent pixels in 4-pixel tiles: 2x3 tiles, 2 latent frames each
    out = tmp_path / "fox.mp4"
    streamed = pipe.generate(**kw, output_path=str(out))  # mp4: the decode's chunks go to the encoder
    assert probe_mp4(out)["frames"] == 5 and streamed.frames.shape == tiled.frames.shape == (5, 48, 64, 3)
    assert (streamed.frames == tiled.frames).all()
    vae.set_tiling(None)
    whole = pipe.generate(**kw, output_type="np")
    assert torch.equal(whole.latents, tiled.latents)  # only the decode differs
    assert not (whole.frames == tiled.frames).all()


def test_cli_flags_reach_the_engine(tiny_official_dir, tmp_path, monkeypatch, capsys):
    from lightx2v.api import LightX2V
    from lightx2v.cli.main import main
    from tests.cli.test_cli import _gen

    seen = []

    def stop(cls, mc, engine, **kw):
        seen.append((engine.vae_tiling, engine.vae_tile_size))
        raise InputError("stopped before loading")

    monkeypatch.setattr(LightX2V, "from_model_config", classmethod(stop))
    for flags in ([], ["--vae-tiling"], ["--vae-tile-size", "192"]):
        assert main(_gen(tiny_official_dir, tmp_path / "v.mp4", *flags)) == 2
    assert seen == [(False, 256), (True, 256), (True, 192)]
    capsys.readouterr()
    assert main(_gen(tiny_official_dir, tmp_path / "v.mp4", "--vae-tile-size", "100")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--vae-tile-size must be a multiple of 64 pixels from 128" in err, err


def test_a_vae_without_tiles_stays_whole_with_a_warning():
    from lightx2v.runtime.engine import tile_vae

    with pytest.warns(UserWarning, match="Linear has no tiled decode"):
        assert tile_vae(nn.Linear(2, 2), 256) == "vae: Linear has no tiled decode; untiled"
    vae = _vae("wan2.2")
    assert tile_vae(vae, 256) == "vae: tiled decode/encode, tile 256 px, overlap 64 px"
    assert vae.tiling.latent(16) == (16, 4)
