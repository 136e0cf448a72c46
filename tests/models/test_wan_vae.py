"""Parity of lightx2v's Wan2.1 VAE with diffusers' AutoencoderKLWan (tiny random weights, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

from lightx2v.errors import CheckpointError  # noqa: E402
from lightx2v.loading.state_dict import load_into, read_tensors, rename  # noqa: E402
from lightx2v.models.wan.vae import (  # noqa: E402
    CausalCache,
    WanVAE,
    WanVAEConfig,
    tiny_vae_config,
    vae_key_from_diffusers,
)

TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0)  # fmt: skip


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs err {err} vs max|ref| {ref.abs().max().item()}"


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial values everywhere: fan-in scaled weights, non-zero biases, gammas around 1."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / (p[0].numel() ** 0.5))


@pytest.fixture(scope="module")
def models() -> tuple[AutoencoderKLWan, WanVAE, dict]:
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**TINY).eval()
    _randomize(ref)
    official_sd = rename(ref.state_dict(), vae_key_from_diffusers)
    with torch.device("meta"):
        ours = WanVAE(WanVAEConfig.from_diffusers(ref.config))
    load_into(ours, official_sd, dtype=torch.float32, what="VAE")
    return ref, ours.eval(), official_sd


def _video(t: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, 32, 32, generator=gen) * 2 - 1


def _ref_normalized(ref: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    # as WanImageToVideoPipeline: (mu - mean) * (1 / std)
    mu = ref.encode(video).latent_dist.mean
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    return (mu - mean) * inv_std


def _ref_decode(ref: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    # as WanPipeline: latents / (1 / std) + mean
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    return ref.decode(z / inv_std + mean).sample


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(models, frames):
    ref, ours, _ = models
    video = _video(frames)
    with torch.no_grad():
        want = _ref_normalized(ref, video)
    got = ours.encode(video)
    assert got.shape == (1, 16, 1 + (frames - 1) // 4, 4, 4)
    assert got.dtype == torch.float32
    _close(got, want)


@pytest.mark.parametrize("latent_frames", [1, 3])
def test_decode_matches_diffusers(models, latent_frames):
    ref, ours, _ = models
    z = torch.randn(1, 16, latent_frames, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = _ref_decode(ref, z)
    got = ours.decode(z)
    assert got.shape == (1, 3, 1 + 4 * (latent_frames - 1), 32, 32)
    assert got.min() >= -1 and got.max() <= 1
    # the random decoder saturates some pixels; make sure the comparison is not all clamps
    assert ((want.abs() < 0.99).float().mean() > 0.2).item()
    _close(got, want)


def test_official_file_round_trip(models, tmp_path):
    ref, ours, official_sd = models
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({k: v.clone() for k, v in official_sd.items()}, path)
    with torch.device("meta"):
        again = WanVAE(WanVAEConfig.from_diffusers(ref.config))
    load_into(again, read_tensors(path), dtype=torch.float32, what="VAE")
    video = _video(5, seed=3)
    z = ours.encode(video)
    assert torch.equal(again.encode(video), z)
    assert torch.equal(again.decode(z), ours.decode(z))


def test_config_from_diffusers(models):
    ref, _, _ = models
    cfg = WanVAEConfig.from_diffusers(ref.config)
    # TINY is lightx2v's own tiny VAE (demo, pipeline tests): the parity tests above cover it
    assert cfg == tiny_vae_config() == WanVAEConfig(dim=8, dim_mult=(1, 2, 2, 2))
    assert (cfg.scale_factor_temporal, cfg.scale_factor_spatial) == (4, 8)
    with torch.device("meta"):
        default = AutoencoderKLWan()
    assert WanVAEConfig.from_diffusers(default.config) == WanVAEConfig()
    with pytest.raises(CheckpointError, match="Wan2.2"):
        WanVAEConfig.from_diffusers({**ref.config, "is_residual": True})
    with pytest.raises(CheckpointError, match="latents_mean"):
        WanVAEConfig(z_dim=4)


@pytest.mark.parametrize("num_res_blocks", [2, 1])
def test_key_map_is_a_bijection(num_res_blocks):
    with torch.device("meta"):
        ref = AutoencoderKLWan(num_res_blocks=num_res_blocks)
        ours = WanVAE(WanVAEConfig(num_res_blocks=num_res_blocks))
    ref_keys = list(ref.state_dict())
    mapped = [vae_key_from_diffusers(k, num_res_blocks=num_res_blocks) for k in ref_keys]
    assert len(set(mapped)) == len(ref_keys)  # injective
    assert set(mapped) == set(ours.state_dict())  # onto our (official) keys
    own = ours.state_dict()
    for k, nk in zip(ref_keys, mapped):
        assert ref.state_dict()[k].shape == own[nk].shape, (k, nk)
    assert vae_key_from_diffusers("encoder.something_new.weight") == "encoder.something_new.weight"


def test_official_key_names_and_no_buffers():
    with torch.device("meta"):
        vae = WanVAE(WanVAEConfig())
    sd = vae.state_dict()
    assert list(vae.buffers()) == []
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.middle.1.norm.gamma": (384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k


def test_encode_is_causal_and_cache_is_reset(models):
    _, ours, _ = models
    video = _video(9, seed=4)
    full = ours.encode(video)
    # the first 5 frames give the first 2 latent frames, whatever follows them
    _close(ours.encode(video[:, :, :5]), full[:, :, :2])
    # a cache left dirty by another call is reset: same result
    cache = CausalCache()
    ours.decode(full[:, :, :1], cache=cache)
    cache.frames = [torch.ones(1)] * 3
    assert torch.equal(ours.encode(video, cache=cache), full)
