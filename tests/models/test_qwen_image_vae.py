"""The Qwen-Image VAE (our Wan2.1 VAE module, diffusers keys renamed) against diffusers'
AutoencoderKLQwenImage on identical random weights: one image encoded and decoded; the config read
from vae/config.json (every field honoured or refused by name)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLQwenImage  # noqa: E402

from lightx2v.errors import CheckpointError, InputError  # noqa: E402
from lightx2v.loading.state_dict import load_into, rename  # noqa: E402
from lightx2v.models.qwen_image.vae import config_from_diffusers, decode_image, encode_image  # noqa: E402
from lightx2v.models.wan.vae import WanVAE  # noqa: E402

MEAN = [0.1 * i - 0.3 for i in range(4)]
STD = [0.5 + 0.25 * i for i in range(4)]
TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0, latents_mean=MEAN, latents_std=STD)


def _randomize(model: torch.nn.Module) -> None:
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
def models():
    ref = AutoencoderKLQwenImage(**TINY).eval()
    _randomize(ref)
    cfg = config_from_diffusers(dict(ref.config))
    with torch.device("meta"):
        ours = WanVAE(cfg)
    load_into(ours, rename(ref.state_dict(), cfg.key_from_diffusers), dtype=torch.float32, what="VAE")
    return ref, ours.eval()


def _close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= tol * ref.abs().max().item(), err


def _image(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 48, generator=gen) * 2 - 1


def test_encode_matches_diffusers_normalized_as_the_pipelines(models):
    ref, ours = models
    img = _image()
    with torch.no_grad():
        mu = ref.encode(img.unsqueeze(2)).latent_dist.mean  # [1, z, 1, 4, 6]
    mean = torch.tensor(MEAN).view(1, 4, 1, 1, 1)
    std = torch.tensor(STD).view(1, 4, 1, 1, 1)
    got = encode_image(ours, img)
    assert got.shape == (1, 4, 1, 4, 6)
    _close(got, (mu - mean) / std)


def test_decode_matches_diffusers(models):
    ref, ours = models
    z = torch.randn(1, 4, 1, 4, 6, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(MEAN).view(1, 4, 1, 1, 1)
    std = torch.tensor(STD).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        want = ref.decode(z * std + mean).sample[:, :, 0]  # what QwenImagePipeline decodes
    got = decode_image(ours, z)
    assert got.shape == (1, 3, 32, 48) and got.dtype == torch.float32
    _close(got, want)
    assert got.abs().max() <= 1.0


def test_keys_are_the_wan_vae_keys_renamed():
    """The two diffusers classes name every tensor alike: one key map serves both."""
    from diffusers import AutoencoderKLWan

    wan_keys = set(AutoencoderKLWan(**{k: v for k, v in TINY.items()}).state_dict())
    assert set(AutoencoderKLQwenImage(**TINY).state_dict()) == wan_keys


def test_released_config_reads(tmp_path):
    released = {"_class_name": "AutoencoderKLQwenImage", "_diffusers_version": "0.34.0.dev0", "attn_scales": [],
                "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2,
                "temperal_downsample": [False, True, True], "z_dim": 16,
                "latents_mean": [0.0] * 16, "latents_std": [2.0] * 16}
    cfg = config_from_diffusers(json.loads(json.dumps(released)))
    assert (cfg.dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (96, 16, (1, 2, 4, 4), 2)
    assert cfg.latents_std == (2.0,) * 16 and cfg.scale_factor_spatial == 8


@pytest.mark.parametrize("change, words", [
    ({"_class_name": "AutoencoderKLWan"}, "AutoencoderKLWan"),
    ({"scaling_factor": 1.0}, "scaling_factor"),
    ({"input_channels": 4}, "input_channels"),
    ({"attn_scales": [0.5]}, "attn_scales"),
    ({"latents_mean": [0.0] * 3}, "latents_mean"),
    ({"z_dim": "x"}, "malformed"),
])
def test_config_refuses_by_name(change, words):
    with pytest.raises(CheckpointError, match=words):
        config_from_diffusers({**TINY, **change})


def test_wrong_image_shape_is_one_line(models):
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        encode_image(models[1], torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(InputError, match="image latents"):
        decode_image(models[1], torch.zeros(1, 4, 2, 2, 2))
