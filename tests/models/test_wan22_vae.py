"""The Wan2.2 VAE: parity with diffusers' AutoencoderKLWan(is_residual=True) on tiny random weights
(fp32, CPU), the official key names, config parsing, and a `Wan2.2_VAE.pth`-style file."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

from lightx2v.errors import CheckpointError, InputError  # noqa: E402
from lightx2v.loading.state_dict import load_into, read_tensors, rename  # noqa: E402
from lightx2v.models.wan.vae import WanVAEConfig  # noqa: E402
from lightx2v.models.wan.vae22 import (  # noqa: E402
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    Wan22VAE,
    Wan22VAEConfig,
    tiny_vae22_config,
    vae22_config_from_state_dict,
    vae22_key_from_diffusers,
)
from lightx2v.models.wan.vae_blocks import CausalCache  # noqa: E402

# The fields of Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json, with the tiny widths of tiny_vae22_config.
TINY = dict(base_dim=16, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12,
            out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
            latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD))  # fmt: skip
# The published Wan2.2-TI2V-5B diffusers config (the statistics are the defaults); its clip_output
# false was written by diffusers' pre-release conversion script.
PUBLISHED = dict(TINY, base_dim=160, decoder_base_dim=256, clip_output=False)
# diffusers >= 0.35 no longer takes clip_output as an argument
DIFFUSERS_ARGS = {k: v for k, v in PUBLISHED.items() if k not in ("clip_output", "num_res_blocks")}


def _close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> float:
    assert ours.shape == ref.shape
    err = (ours.float() - ref.float()).abs().max().item()
    assert err < tol, f"max abs err {err}"
    return err


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
def models() -> tuple[AutoencoderKLWan, Wan22VAE, dict]:
    ref = AutoencoderKLWan(**TINY).eval()
    _randomize(ref)
    config = Wan22VAEConfig.from_diffusers(ref.config)
    official_sd = rename(ref.state_dict(), config.key_from_diffusers)
    with torch.device("meta"):
        ours = Wan22VAE(config)
    load_into(ours, official_sd, dtype=torch.float32, what="VAE")
    return ref, ours.eval(), official_sd


def _video(t: int, seed: int = 1, size: int = 64) -> torch.Tensor:
    return torch.rand(1, 3, t, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 48, 1, 1, 1)
    return torch.tensor(WAN22_LATENTS_MEAN).view(shape), torch.tensor(WAN22_LATENTS_STD).view(shape)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(models, frames):
    ref, ours, _ = models
    video = _video(frames)
    mean, std = _stats()
    with torch.no_grad():
        want = (ref.encode(video).latent_dist.mean - mean) * (1.0 / std)  # as WanImageToVideoPipeline
    got = ours.encode(video)
    assert got.shape == (1, 48, 1 + (frames - 1) // 4, 4, 4) and got.dtype == torch.float32
    _close(got, want)


@pytest.mark.parametrize("latent_frames", [1, 3])
def test_decode_matches_diffusers(models, latent_frames):
    ref, ours, _ = models
    z = torch.randn(1, 48, latent_frames, 4, 4, generator=torch.Generator().manual_seed(2))
    mean, std = _stats()
    with torch.no_grad():
        want = ref.decode(z / (1.0 / std) + mean).sample  # as WanPipeline
    got = ours.decode(z)
    assert got.shape == (1, 3, 1 + 4 * (latent_frames - 1), 64, 64)
    assert got.min() >= -1 and got.max() <= 1
    assert ((want.abs() < 0.99).float().mean() > 0.2).item()  # not a comparison of clamps
    _close(got, want)


def test_round_trip_of_a_non_square_video(models):
    ref, ours, _ = models
    video = _video(5, seed=5)[..., :48]  # 64 x 48, 2 latent frames
    mean, std = _stats()
    with torch.no_grad():
        want_z = (ref.encode(video).latent_dist.mean - mean) / std
        want = ref.decode(want_z * std + mean).sample
    z = ours.encode(video)
    _close(z, want_z)
    _close(ours.decode(z), want)


def test_clip_output_false_does_not_clamp(models):
    _, ours, official_sd = models
    with torch.device("meta"):
        loose = Wan22VAE(Wan22VAEConfig.from_diffusers({**TINY, "clip_output": False}))
    load_into(loose, official_sd, dtype=torch.float32, what="VAE")
    z = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    raw, clamped = loose.decode(z), ours.decode(z)
    assert raw.abs().max() > 1
    assert torch.equal(raw.clamp(-1, 1), clamped)


def test_official_key_names():
    with torch.device("meta"):
        vae = Wan22VAE(Wan22VAEConfig())
    sd = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert list(vae.buffers()) == []  # the statistics live in the config, the shortcuts have no parameters
    expected = {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),  # patchified RGB: 3 * 2 * 2 channels
        "encoder.downsamples.0.downsamples.0.residual.0.gamma": (160, 1, 1, 1),
        "encoder.downsamples.0.downsamples.1.residual.6.weight": (160, 160, 3, 3, 3),
        "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": (320, 160, 1, 1, 1),
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.downsamples.2.downsamples.2.time_conv.weight": (640, 640, 3, 1, 1),
        "encoder.downsamples.3.downsamples.1.residual.2.weight": (640, 640, 3, 3, 3),
        "encoder.middle.1.to_qkv.weight": (1920, 640, 1, 1),
        "encoder.head.0.gamma": (640, 1, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "decoder.middle.2.residual.3.gamma": (1024, 1, 1, 1),
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.0.upsamples.3.resample.1.weight": (1024, 1024, 3, 3),  # keeps the width
        "decoder.upsamples.1.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.2.upsamples.0.shortcut.weight": (512, 1024, 1, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
        "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
    }
    for k, shape in expected.items():
        assert sd[k] == shape, k
    assert "decoder.upsamples.2.upsamples.3.time_conv.weight" not in sd  # temporal upsampling: (T, T, F)
    assert "encoder.downsamples.0.downsamples.2.time_conv.weight" not in sd  # temporal downsampling: (F, T, T)
    assert not any("avg_shortcut" in k for k in sd)
    # count: encoder conv1 2 + 4 stages x 2 residuals x 6 + 2 shortcuts x 2 + 3 resamples x 2 + 2 time_convs x 2
    # + middle 17 + head 3 = 84; decoder conv1 2 + middle 17 + 4 x 3 x 6 + 2 x 2 + 3 x 2 + 2 x 2 + head 3 = 108;
    # conv1 / conv2 4
    assert len(sd) == 84 + 108 + 4 == 196


@pytest.mark.parametrize("num_res_blocks", [2, 1])
def test_key_map_is_a_bijection(num_res_blocks):
    with torch.device("meta"):
        ref = AutoencoderKLWan(**DIFFUSERS_ARGS, num_res_blocks=num_res_blocks)
        ours = Wan22VAE(Wan22VAEConfig(num_res_blocks=num_res_blocks))
    ref_sd, own = ref.state_dict(), ours.state_dict()
    mapped = {k: vae22_key_from_diffusers(k, num_res_blocks) for k in ref_sd}
    assert len(set(mapped.values())) == len(ref_sd)
    assert set(mapped.values()) == set(own)
    for k, nk in mapped.items():
        assert ref_sd[k].shape == own[nk].shape, (k, nk)
    assert vae22_key_from_diffusers("encoder.down_blocks.1.downsampler.time_conv.weight") == (
        "encoder.downsamples.1.downsamples.2.time_conv.weight")
    assert vae22_key_from_diffusers("decoder.up_blocks.0.upsampler.resample.1.bias") == (
        "decoder.upsamples.0.upsamples.3.resample.1.bias")
    assert vae22_key_from_diffusers("encoder.something_new.weight") == "encoder.something_new.weight"


def test_official_file_loads_without_renaming(models, tmp_path):
    _, ours, _ = models
    # the reference loads Wan2.2_VAE.pth with model.load_state_dict(torch.load(path)): a plain state dict
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save({k: v.clone() for k, v in ours.state_dict().items()}, path)
    sd = read_tensors(path)
    config = vae22_config_from_state_dict(sd)
    assert config == ours.config == tiny_vae22_config()
    with torch.device("meta"):
        again = Wan22VAE(config)
    load_into(again, sd, dtype=torch.float32, what="VAE")
    video = _video(5, seed=3, size=32)
    z = ours.encode(video)
    assert torch.equal(again.encode(video), z)
    assert torch.equal(again.decode(z), ours.decode(z))


def test_config_from_diffusers():
    assert Wan22VAEConfig.from_diffusers(PUBLISHED) == Wan22VAEConfig(clip_output=False)
    assert Wan22VAEConfig.from_diffusers({**PUBLISHED, "clip_output": True, "_name_or_path": "x"}) == Wan22VAEConfig()
    assert Wan22VAEConfig.from_diffusers(TINY) == tiny_vae22_config()
    cfg = Wan22VAEConfig()
    assert (cfg.scale_factor_temporal, cfg.scale_factor_spatial, cfg.in_channels) == (4, 16, 12)
    assert cfg.temperal_upsample == (True, True, False)


@pytest.mark.parametrize("key,value,match", [
    ("foo", 1, "unknown field 'foo'"),
    ("is_residual", False, "is_residual False is the Wan2.1 VAE"),
    ("attn_scales", [0.5], r"attn_scales \[0.5\] is not supported"),
    ("in_channels", 3, "in_channels 3 does not fit patch_size 2; expected 3 \\* patch_size\\*\\*2 = 12"),
    ("out_channels", 48, "out_channels 48 does not fit patch_size 2"),
    ("scale_factor_spatial", 8, "scale_factor_spatial 8 does not fit the architecture, which gives 16"),
    ("scale_factor_temporal", 8, "scale_factor_temporal 8 does not fit"),
    ("latents_std", [1.0] * 16, "latents_std has 16 values, expected z_dim = 48"),
    ("dim_mult", [1, 2], "temperal_downsample has 3 entries"),
    ("dim_mult", [1, 2, 4, 8], "stage 3 does not fit the parameter-free shortcuts"),
    ("temperal_downsample", [True, True, True], "at most 2 stages may downsample time"),
    ("z_dim", "many", "malformed value"),
])
def test_config_refusals(key, value, match):
    with pytest.raises(CheckpointError, match=match) as e:
        Wan22VAEConfig.from_diffusers({**PUBLISHED, key: value})
    assert str(e.value).startswith("diffusers VAE config.json") and "\n" not in str(e.value)


def test_wan21_config_still_refuses_the_wan22_vae():
    with pytest.raises(CheckpointError, match="is_residual true is a Wan2.2-style"):
        WanVAEConfig.from_diffusers(PUBLISHED)


def test_bad_inputs_and_causality(models):
    _, ours, _ = models
    with pytest.raises(InputError, match="multiples of 16"):
        ours.encode(_video(5, size=40))
    with pytest.raises(InputError, match=r"latents \[B, 48, T, h, w\]"):
        ours.decode(torch.zeros(1, 16, 1, 4, 4))
    video = _video(9, seed=4, size=32)
    full, head = ours.encode(video), ours.encode(video[:, :, :5])
    _close(head, full[:, :, :2])  # the first 5 frames give the first 2 latents, whatever follows
    cache = CausalCache()
    ours.decode(full[:, :, :1], cache=cache)
    cache.frames = [torch.ones(1)] * 3  # a dirty cache is reset
    assert torch.equal(ours.encode(video[:, :, :5], cache=cache), head)
