"""The Qwen-Image-2.1 VAE (our 2-D module) against diffusers' AutoencoderKLQwenImage21 on the same random
weights: encode (posterior mean, normalized) and decode (denormalized, clamped), RGBA; its config rules."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v.errors import CheckpointError, InputError  # noqa: E402
from lightx2v.models.qwen_image.vae21 import QwenImage21VAE, VAE21Config  # noqa: E402

CFG = dict(base_dim=4, decoder_base_dim=6, z_dim=8, dim_mult=[1, 2, 2, 2, 2], num_res_blocks=1,
           temperal_downsample=[False, True, True, True],
           latents_mean=[0.1 * i for i in range(8)], latents_std=[1 + 0.1 * i for i in range(8)])


@pytest.fixture(scope="module")
def pair():
    from diffusers import AutoencoderKLQwenImage21

    torch.manual_seed(0)
    ref = AutoencoderKLQwenImage21(**CFG).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if n.endswith("gamma") else 0.2 * torch.randn_like(p))
    ours = QwenImage21VAE(VAE21Config.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers' names and shapes, time_convs included
    stats = torch.tensor(CFG["latents_mean"]).view(1, -1, 1, 1, 1), torch.tensor(CFG["latents_std"]).view(1, -1, 1, 1, 1)
    return ref, ours, stats


def test_encode_matches_diffusers(pair):
    ref, ours, (mean, std) = pair
    x = torch.rand(2, 4, 1, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = (ref.encode(x).latent_dist.mode() - mean) / std
    got = ours.encode(x)
    assert got.shape == (2, 8, 1, 4, 3)
    assert (got - want).abs().max() < 1e-5


def test_decode_matches_diffusers(pair):
    ref, ours, (mean, std) = pair
    z = torch.randn(1, 8, 1, 4, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.decode(z * std + mean).sample
    got = ours.decode(z)
    assert got.shape == (1, 4, 1, 64, 48)  # RGBA
    assert (got - want).abs().max() < 1e-5
    assert got.abs().max() <= 1.0


def test_config_and_input_rules(pair):
    _, ours, _ = pair
    with pytest.raises(CheckpointError, match="is_residual"):
        VAE21Config.from_diffusers({**CFG, "is_residual": False})
    with pytest.raises(CheckpointError, match="latents_std"):
        VAE21Config.from_diffusers({k: v for k, v in CFG.items() if k != "latents_std"})
    with pytest.raises(CheckpointError, match="AutoencoderKLQwenImage21"):
        VAE21Config.from_diffusers({**CFG, "_class_name": "AutoencoderKLQwenImage"})
    with pytest.raises(InputError, match="decode expects"):
        ours.decode(torch.zeros(1, 4, 1, 2, 2))
