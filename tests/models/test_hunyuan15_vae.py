"""The HunyuanVideo-1.5 VAE against diffusers' AutoencoderKLHunyuanVideo15 on identical random weights
(decode, encode, the pipelines' scaling), its causal time structure, its tiled decode/encode (against
diffusers' tiled path and against the untiled output), the diffusers <-> official key table, and its configs."""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.hunyuan15.vae import HunyuanVideo15VAE
from lightx2v.models.hunyuan15.vae_config import HunyuanVideo15VAEConfig, config_from_state_dict, tiny_vae_config
from lightx2v.models.hunyuan15.vae_keys import (
    diffusers_from_official, official_from_diffusers, state_dict_from_diffusers, state_dict_to_diffusers,
)
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae_tiling import VAETiling

diffusers = pytest.importorskip("diffusers")

# the released vae/config.json (tencent/HunyuanVideo-1.5)
OFFICIAL_JSON = {
    "_class_name": "AutoencoderKLConv3D", "_diffusers_version": "0.35.0",
    "block_out_channels": [128, 256, 512, 1024, 1024], "downsample_match_channel": True, "ffactor_spatial": 16,
    "ffactor_temporal": 4, "in_channels": 3, "latent_channels": 32, "layers_per_block": 2, "out_channels": 3,
    "sample_size": 256, "sample_tsize": 64, "scaling_factor": 1.03682, "shift_factor": None,
    "upsample_match_channel": True,
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _pair(cfg: HunyuanVideo15VAEConfig, seed: int = 0):
    """(diffusers model, ours) with the same random weights; ours built on meta, loaded strict + assign."""
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLHunyuanVideo15(**cfg.to_diffusers()).eval()
    with torch.no_grad():
        randomize_(ref, seed)
    with torch.device("meta"):
        ours = HunyuanVideo15VAE(HunyuanVideo15VAEConfig.from_diffusers(dict(ref.config)))
    ours.load_state_dict(state_dict_from_diffusers(ref.state_dict()), strict=True, assign=True)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def pair():
    return _pair(tiny_vae_config())


def _z(t: int, h: int, w: int, c: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(seed))


def _video(t: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- parity


def test_decode_matches_diffusers(pair):
    ref, ours = pair
    z = _z(3, 2, 3)
    with torch.no_grad():
        # as HunyuanVideo15Pipeline: latents / scaling_factor, decode, (x / 2 + 0.5).clamp(0, 1)
        want = ref.decode(z / ref.config.scaling_factor).sample
    got = ours.decode(z)
    assert got.shape == (1, 3, 9, 32, 48) and got.dtype == torch.float32
    assert want.abs().max() > 1.2  # the clamp is exercised
    assert _rel(got, want.clamp(-1, 1)) < 1e-5
    raw = ours.decoder(z / ours.config.scaling_factor)  # the decoder itself, before the clamp
    assert _rel(raw, want) < 1e-5


def test_encode_matches_diffusers(pair):
    ref, ours = pair
    video = _video(5, 32, 48)
    with torch.no_grad():
        # as HunyuanVideo15ImageToVideoPipeline._get_image_latents: mode * scaling_factor
        want = ref.encode(video).latent_dist.mode() * ref.config.scaling_factor
    got = ours.encode(video)
    assert got.shape == (1, 32, 2, 2, 3)
    assert _rel(got, want) < 1e-5
    image = ours.encode(video[:, :, :1])  # one frame (I2V): the first latent frame of the clip's
    assert image.shape == (1, 32, 1, 2, 3) and _rel(image, got[:, :, :1]) < 1e-5


def test_width_changing_blocks_match_diffusers():
    """match_channel false: the level after a resampler changes width in its first block (nin_shortcut)."""
    cfg = tiny_vae_config(block_out_channels=(4, 4, 8, 64, 64), downsample_match_channel=False,
                          upsample_match_channel=False)
    ref, ours = _pair(cfg, seed=4)
    assert any("nin_shortcut" in k for k in ours.state_dict())
    z, video = _z(2, 1, 2), _video(5, 16, 32)
    with torch.no_grad():
        want_dec = ref.decode(z / cfg.scaling_factor).sample
        want_enc = ref.encode(video).latent_dist.mode() * cfg.scaling_factor
    assert _rel(ours.decoder(z / cfg.scaling_factor), want_dec) < 1e-5
    assert _rel(ours.encode(video), want_enc) < 1e-5
    assert config_from_state_dict(ours.state_dict()) == cfg


def test_decode_is_causal_in_time(pair):
    """Latent frame k only affects frames from 1 + 4(k-1) on: a shorter decode is a prefix of a longer one."""
    _, ours = pair
    z = _z(3, 2, 2)
    whole, head = ours.decode(z), ours.decode(z[:, :, :2])
    assert head.shape[2] == 5 and _rel(head, whole[:, :, :5]) < 1e-5
    chunks = list(ours.decode_chunks(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4] and torch.equal(torch.cat(chunks, dim=2), whole)


def test_shift_factor_is_inverted_by_encode():
    cfg = tiny_vae_config(shift_factor=0.25, scaling_factor=0.5)
    with torch.device("meta"):
        model = HunyuanVideo15VAE(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        randomize_(model)
    z = _z(1, 1, 1)
    seen = []
    model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.decode(z)
    assert torch.allclose(seen[0], z / 0.5 + 0.25)  # the official decode: latents / scale + shift


def test_bad_inputs_are_refused(pair):
    _, ours = pair
    with pytest.raises(InputError, match="1 \\+ 4k"):
        ours.encode(_video(4, 16, 16))
    with pytest.raises(InputError, match="multiples of 16"):
        ours.encode(_video(1, 24, 16))
    with pytest.raises(InputError, match=r"\[B, 32, T, h, w\]"):
        ours.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(InputError):
        ours.set_tiling(VAETiling(40, 8))  # not multiples of 16 pixels


# ---- tiling


@pytest.fixture
def tiled(pair):
    ref, ours = pair
    yield ref, ours
    ours.set_tiling(None)
    ref.disable_tiling()


def test_tiled_decode_matches_diffusers(tiled):
    """6x9 latent pixels in tiles of 4 (64 px), stride 3: the grids agree with diffusers' tiled_decode."""
    ref, ours = tiled
    ours.set_tiling(VAETiling(64, 16))
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_latent_min_height=4,
                      tile_latent_min_width=4, tile_overlap_factor=0.25)
    z = _z(1, 6, 9)
    with torch.no_grad():
        want = ref.decode(z / ref.config.scaling_factor).sample.clamp(-1, 1)
    got = ours.decode(z)
    assert got.shape == want.shape == (1, 3, 1, 96, 144)
    assert (got - want).abs().max().item() < 1e-5


def test_tiled_encode_matches_diffusers(tiled):
    ref, ours = tiled
    ours.set_tiling(VAETiling(64, 16))
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_latent_min_height=4,
                      tile_latent_min_width=4, tile_overlap_factor=0.25)
    video = _video(1, 96, 144)
    with torch.no_grad():
        want = ref.encode(video).latent_dist.mode() * ref.config.scaling_factor
    got = ours.encode(video)
    assert got.shape == want.shape == (1, 32, 1, 6, 9)
    assert (got - want).abs().max().item() < 1e-5


def test_tiled_decode_close_to_untiled():
    """On tiny random weights (a worst case: the random decoder's receptive field and its frame-wide
    mid attention reach far past a tile) a 12-latent-pixel tile overlapping by half stays within 0.2
    relative L2 of the untiled decode (measured 0.16); the engine's tiling step sets it."""
    from lightx2v.runtime.engine import tile_vae

    cfg = tiny_vae_config(block_out_channels=(4, 8, 16, 32, 32), latent_channels=16)
    model = HunyuanVideo15VAE(cfg).eval()
    with torch.no_grad():
        randomize_(model)
    z = _z(1, 16, 16, c=16)
    whole = model.decode(z)
    model.set_tiling(VAETiling(192, 96))
    assert _rel(model.decode(z), whole) < 0.2
    assert "tile 128 px" in tile_vae(model, 128) and model.tiling == VAETiling(128, 32)
    model.set_tiling(VAETiling(256, 64))  # one tile covers the frame: the untiled path
    assert model._grid(16, 16) is None and model._grid(16, 17) is not None


# ---- keys


def test_key_table_is_a_bijection_at_release_size():
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLHunyuanVideo15()
        ours = HunyuanVideo15VAE(HunyuanVideo15VAEConfig())
    d_keys, o_keys = set(ref.state_dict()), set(ours.state_dict())
    assert len(d_keys) == len(o_keys)
    assert {official_from_diffusers(k) for k in d_keys} == o_keys
    assert {diffusers_from_official(k) for k in o_keys} == d_keys
    assert all(diffusers_from_official(official_from_diffusers(k)) == k for k in d_keys)
    # spot checks against diffusers' conversion script's pairs
    assert official_from_diffusers("encoder.down_blocks.2.downsamplers.0.conv.conv.weight") == \
        "encoder.down.2.downsample.conv.conv.weight"
    assert official_from_diffusers("decoder.mid_block.attentions.0.to_q.bias") == "decoder.mid.attn_1.q.bias"
    assert official_from_diffusers("decoder.up_blocks.4.resnets.2.norm2.gamma") == "decoder.up.4.block.2.norm2.gamma"
    assert official_from_diffusers("encoder.down_blocks.1.resnets.0.conv_shortcut.weight") == \
        "encoder.down.1.block.0.nin_shortcut.weight"
    assert official_from_diffusers("not.a.vae.key") == "not.a.vae.key"  # unknown keys reach the loader unchanged


def test_state_dict_round_trip(pair):
    _, ours = pair
    sd = ours.state_dict()
    back = state_dict_from_diffusers(state_dict_to_diffusers(sd))
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)


# ---- configs


def test_configs_of_both_layouts():
    released = HunyuanVideo15VAEConfig()
    assert HunyuanVideo15VAEConfig.from_official(OFFICIAL_JSON) == released
    d = {"_class_name": "AutoencoderKLHunyuanVideo15", **released.to_diffusers()}
    assert HunyuanVideo15VAEConfig.from_diffusers(d) == released
    with torch.device("meta"):
        default = diffusers.AutoencoderKLHunyuanVideo15()  # diffusers' defaults are the release too
    assert HunyuanVideo15VAEConfig.from_diffusers(dict(default.config)) == released
    assert HunyuanVideo15VAEConfig.from_official({"latent_channels": 16}).latent_channels == 16  # omitted: default
    with torch.device("meta"):
        sd = HunyuanVideo15VAE(released).state_dict()
    assert config_from_state_dict(sd) == released


@pytest.mark.parametrize("cfg, message", [
    ({**OFFICIAL_JSON, "dropout": 0.0}, "unknown field 'dropout'"),
    ({**OFFICIAL_JSON, "_class_name": "AutoencoderKLWan"}, "_class_name 'AutoencoderKLWan'"),
    ({**OFFICIAL_JSON, "ffactor_spatial": 32}, "ffactor_spatial 32 needs 5 resampling levels"),
    ({**OFFICIAL_JSON, "ffactor_temporal": 3}, "powers of 2"),
    ({**OFFICIAL_JSON, "in_channels": 4}, "in_channels 4"),
    ({**OFFICIAL_JSON, "downsample_match_channel": "yes"}, "malformed"),
])
def test_official_config_refusals(cfg, message):
    with pytest.raises(CheckpointError, match=message):
        HunyuanVideo15VAEConfig.from_official(cfg)


def test_diffusers_config_refusals():
    with pytest.raises(CheckpointError, match="unknown field 'ffactor_spatial'"):
        HunyuanVideo15VAEConfig.from_diffusers({"ffactor_spatial": 16})  # an official name in a diffusers file
    with pytest.raises(CheckpointError, match="no tensor 'decoder.conv_in.conv.weight'"):
        config_from_state_dict({})


def test_bf16_decode_stays_close_to_fp32():
    """Half precision (the norms computed in float32 as diffusers does) stays near the fp32 decode
    (measured 0.013 relative L2 on these weights)."""
    cfg = tiny_vae_config()
    model = HunyuanVideo15VAE(cfg).eval()
    with torch.no_grad():
        randomize_(model)
    z = _z(2, 2, 2)
    want = model.decode(z)
    got = model.to(torch.bfloat16).decode(z)
    assert got.dtype == torch.float32 and model.dtype == torch.bfloat16
    assert _rel(got, want) < 0.05
