"""The tiny VAE's Wan2.2 TI2V-5B and HunyuanVideo-1.5 variants (lightx2v.models.wan.taehv, taehv_files)
against an independent reading of madebyollin/taehv's published `TAEHV` with `patch_size` 2.

The reference here is plain functional ops on a state dict, written from taehv.py's definition: the
encoder's first conv takes 3 * 2^2 channels after `F.pixel_unshuffle(x, 2)`, the decoder's last conv
gives 3 * 2^2 channels that `F.pixel_shuffle(y, 2)` spreads, then the clamp to [0, 1] and the trim of
the first 3 frames; LightX2V's lighttaehy1_5 (its `tae.py`, model_type "hy15") with LeakyReLU(0.2)
activations and pixels clamped to [-1, 1]. It shares no code with the module. Full-width networks on
tiny latents (2 x 3), random weights.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.taehv import KINDS, TinyVAE, TinyVAEConfig, decode_pixel_bytes, inspect_tiny_vae
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

# ---------------------------------------------------------------- the reference, from taehv.py's definition

ENC = [("conv", 1, True), ("act",)]
for _s in (2, 2, 1):
    ENC += [("tpool", _s), ("conv", 2, False), ("mem",), ("mem",), ("mem",)]
ENC += [("conv", 1, True)]
DEC = [("clamp",), ("conv", 1, True), ("act",)]
for _s in (1, 2, 2):
    DEC += [("mem",), ("mem",), ("mem",), ("up",), ("tgrow", _s), ("conv", 1, False)]
DEC += [("act",), ("conv", 1, True)]
VARIANTS = {"taew2_2": (48, 2), "lighttaew2_2": (48, 2), "taehv1_5": (32, 2), "lighttaehy1_5": (32, 2)}
HY_SCALE = 1.03682  # HunyuanVideo-1.5's VAE scaling_factor (LightTaeHy15.decode divides by it)


def reference_shapes(z: int, p: int) -> dict[str, tuple[int, ...]]:
    """Released keys and shapes: conv widths in order (encoder 3p^2 -> 64 ... -> z; decoder z -> 256, 128, 64, 64 -> 3p^2)."""
    out = {}
    for part, layers, widths in (("encoder", ENC, [(3 * p * p, 64)] + [(64, 64)] * 3 + [(64, z)]),
                                 ("decoder", DEC, [(z, 256), (256, 128), (128, 64), (64, 64), (64, 3 * p * p)])):
        width = None
        for i, layer in enumerate(layers):
            k = f"{part}.{i}."
            if layer[0] == "conv":
                n_in, width = widths.pop(0)
                out[k + "weight"] = (width, n_in, 3, 3)
                if layer[2]:
                    out[k + "bias"] = (width,)
            elif layer[0] == "mem":
                out[k + "conv.0.weight"], out[k + "conv.0.bias"] = (width, 2 * width, 3, 3), (width,)
                for j in (2, 4):
                    out[k + f"conv.{j}.weight"], out[k + f"conv.{j}.bias"] = (width, width, 3, 3), (width,)
            elif layer[0] == "tpool":
                out[k + "conv.weight"] = (width, width * layer[1], 1, 1)
            elif layer[0] == "tgrow":
                out[k + "conv.weight"] = (width * layer[1], width, 1, 1)
    return out


def reference_apply(sd, part, x, leaky=False):
    """taehv's apply_model_with_memblocks(parallel=True): x [N, T, C, H, W] -> [N, T', C', H', W']."""
    act = (lambda v: F.leaky_relu(v, 0.2)) if leaky else F.relu
    n, t = x.shape[:2]
    x = x.reshape(n * t, *x.shape[2:])
    for i, layer in enumerate(ENC if part == "encoder" else DEC):
        k, kind = f"{part}.{i}.", layer[0]
        if kind == "conv":
            x = F.conv2d(x, sd[k + "weight"], sd.get(k + "bias"), stride=layer[1], padding=1)
        elif kind == "act":
            x = act(x)
        elif kind == "clamp":
            x = torch.tanh(x / 3) * 3
        elif kind == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif kind == "tpool":
            x = F.conv2d(x.reshape(-1, layer[1] * x.shape[1], *x.shape[2:]), sd[k + "conv.weight"])
        elif kind == "tgrow":
            c = x.shape[1]
            x = F.conv2d(x, sd[k + "conv.weight"]).reshape(-1, c, *x.shape[2:])
        else:  # MemBlock: past = the input one frame earlier (zeros first); equal widths: identity skip
            frames = x.reshape(n, -1, *x.shape[1:])
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, : frames.shape[1]].reshape(x.shape)
            h = act(F.conv2d(torch.cat([x, past], 1), sd[k + "conv.0.weight"], sd[k + "conv.0.bias"], padding=1))
            h = act(F.conv2d(h, sd[k + "conv.2.weight"], sd[k + "conv.2.bias"], padding=1))
            x = act(F.conv2d(h, sd[k + "conv.4.weight"], sd[k + "conv.4.bias"], padding=1) + x)
    return x.reshape(n, -1, *x.shape[1:])


def reference_decode(sd, z, leaky=False, signed=False):
    """decode_video: latents NTCHW -> pixel_shuffle(2), clamp ([0, 1]; [-1, 1] for lighttaehy1_5), 3 frames trimmed."""
    y = F.pixel_shuffle(reference_apply(sd, "decoder", z, leaky), 2)
    return y.clamp(-1, 1)[:, 3:] if signed else y.clamp(0, 1)[:, 3:]


def reference_encode(sd, x):
    """encode_video: pixels NTCHW in [0, 1] -> pixel_unshuffle(2), padded to a multiple of 4 -> latents."""
    x = F.pixel_unshuffle(x, 2)
    if x.shape[1] % 4:
        x = torch.cat([x, x[:, -1:].repeat_interleave(4 - x.shape[1] % 4, dim=1)], 1)
    return reference_apply(sd, "encoder", x)


@functools.lru_cache(maxsize=None)
def _weights(kind: str, seed: int = 3) -> dict:
    """(Read-only, shared) random weights of the release's architecture; the head's bias keeps pixels mostly inside the range."""
    model = randomize_(TinyVAE(TinyVAEConfig(kind=kind)), seed=seed)
    with torch.no_grad():
        model.decoder[22].bias.fill_(0.0 if kind == "lighttaehy1_5" else 0.5)
        model.decoder[22].weight.mul_(0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _model(sd, kind):
    model = TinyVAE(TinyVAEConfig(kind=kind))
    model.load_state_dict(sd)
    return model.eval()


def _raw(kind, z):
    """What the network itself decodes, from the DiT's latents (the published maps)."""
    if kind == "lighttaew2_2":
        mean, std = (torch.tensor(v).view(1, 48, 1, 1, 1) for v in (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD))
        return z * std + mean
    return z / HY_SCALE if kind == "lighttaehy1_5" else z


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_keys_and_shapes_are_the_released_ones(kind):
    z, p = VARIANTS[kind]
    ours = {k: tuple(v.shape) for k, v in TinyVAE(TinyVAEConfig(kind=kind)).state_dict().items()}
    assert ours == reference_shapes(z, p) and len(ours) == 128
    cfg = TinyVAEConfig(kind=kind)
    assert (cfg.z_dim, cfg.patch_size, cfg.space.spatial) == (z, p, 16)
    assert decode_pixel_bytes(cfg) == 512 and decode_pixel_bytes(TinyVAEConfig()) == 2048  # / p^2


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_decode_matches_reference(kind):
    sd = _weights(kind)
    zc, _ = VARIANTS[kind]
    z = torch.randn(1, zc, 3, 2, 3, generator=torch.Generator().manual_seed(0))  # DiT latents, NCTHW
    signed = kind == "lighttaehy1_5"
    ref = reference_decode(sd, _raw(kind, z).transpose(1, 2), leaky=signed, signed=signed).transpose(1, 2)
    ref = ref if signed else ref * 2 - 1                         # -> [-1, 1]
    assert ref.shape == (1, 3, 9, 32, 48)                        # 4 * 2 + 1 frames, 16x space
    inside = ((ref > -1) & (ref < 1)).float().mean()
    assert inside > 0.5, inside                                  # not a comparison of clamped values
    model = _model(sd, kind)
    chunks = []
    out = model.decode(z, on_chunk=chunks.append)
    assert [c.shape[2] for c in chunks] == [1, 4, 4] and out.dtype == torch.float32
    assert (out - ref).abs().max() < 1e-5
    assert (model.decode(z, chunk=0) - ref).abs().max() < 1e-5   # all latent frames at once
    if signed:  # the activation matters: the same weights with ReLU decode something else
        relu = reference_decode(sd, _raw(kind, z).transpose(1, 2), leaky=False, signed=True).transpose(1, 2)
        assert (relu - ref).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["taew2_2", "lighttaew2_2", "taehv1_5"])
def test_encode_matches_reference(kind):
    sd = _weights(kind)
    video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = reference_encode(sd, ((video + 1) / 2).transpose(1, 2)).transpose(1, 2)  # [1, z, 3, 2, 3]
    if kind == "lighttaew2_2":  # LightX2V's latents are the VAE's own: ours are the DiT's (normalized)
        mean, std = (torch.tensor(v).view(1, 48, 1, 1, 1) for v in (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD))
        ref = (ref - mean) / std
    out = _model(sd, kind).encode(video)
    assert out.shape == (1, VARIANTS[kind][0], 3, 2, 3) and out.dtype == torch.float32
    assert (out - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def test_bad_inputs_are_one_line_errors():
    model = TinyVAE(TinyVAEConfig(kind="taehv1_5", encoder=False))
    with pytest.raises(InputError, match=r"latents \[B, 32, T, h, w\]"):
        model.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(InputError, match="multiples of 16"):
        TinyVAE(TinyVAEConfig(kind="taew2_2")).encode(torch.zeros(1, 3, 5, 24, 32))
    with pytest.raises(InputError, match="lighttaehy1_5's encoder is not supported"):
        TinyVAE(TinyVAEConfig(kind="lighttaehy1_5")).encode(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(InputError, match="latents_mean has 16 values, expected 48"):
        TinyVAEConfig(kind="taew2_2", latents_mean=(0.0,) * 16)


def test_the_familys_latent_map_is_used():
    """A VAE config's own statistics (the family passes them) replace the published ones."""
    sd = _weights("lighttaehy1_5")
    z = torch.randn(1, 32, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    model = TinyVAE(TinyVAEConfig(kind="lighttaehy1_5", latents_mean=(0.0,) * 32, latents_std=(0.5,) * 32))
    model.load_state_dict(sd)
    ref = reference_decode(sd, (z * 0.5).transpose(1, 2), leaky=True, signed=True).transpose(1, 2)
    assert (model.decode(z) - ref).abs().max() < 1e-5


# ---------------------------------------------------------------- files


def _save(sd, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


SPACE = {"taew2_2": "wan2.2", "lighttaew2_2": "wan2.2", "taehv1_5": "hunyuanvideo-1.5",
         "lighttaehy1_5": "hunyuanvideo-1.5"}


@pytest.mark.parametrize("kind", list(VARIANTS))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_release_files_told_from_their_tensors(kind, suffix, tmp_path):
    sd = _weights(kind)
    light = kind.startswith("light")
    # madebyollin ships fp16; LightX2V fp32 trained weights. The file name says nothing (a wrong one here).
    path = _save(sd if light else {k: v.half() for k, v in sd.items()}, tmp_path / f"taew2_1{suffix}")
    info = inspect_tiny_vae(path, space=SPACE[kind])
    assert (info.kind, info.config.encoder) == (kind, True)
    assert ("trained in fp32" if light else "float16") in info.reason
    other = [k for k in KINDS if SPACE.get(k) == SPACE[kind] and k != kind][0]
    assert inspect_tiny_vae(path, kind=other, space=SPACE[kind]).kind == other  # an override
    decoder_only = _save({k: v for k, v in sd.items() if k.startswith("decoder.")}, tmp_path / f"dec{suffix}")
    assert inspect_tiny_vae(decoder_only, space=SPACE[kind]).config.encoder is False


def test_a_file_for_another_latent_space_names_what_it_is(tmp_path):
    wan21 = _save({k: v.half() for k, v in TinyVAE().state_dict().items()}, tmp_path / "taehv1_5.pth")
    wan22 = _save({k: v.half() for k, v in _weights("taew2_2").items()}, tmp_path / "a.safetensors")
    cases = [
        (wan21, "hunyuanvideo-1.5", "is not a HunyuanVideo-1.5 tiny VAE (TAEHV taehv1_5 / lighttaehy1_5): it is a "
                                    "Wan2.1 tiny VAE (taew2_1 / lighttaew2_1: 16 latent channels, patch size 1)"),
        (wan22, "hunyuanvideo-1.5", "it is a Wan2.2 TI2V-5B tiny VAE (taew2_2 / lighttaew2_2: 48 latent channels, patch "
                                    "size 2)"),
        (wan22, "wan2.1", "is not a Wan2.1 tiny VAE (TAEHV taew2_1 / lighttaew2_1): it is a Wan2.2 TI2V-5B"),
        (wan21, "wan2.2", "is not a Wan2.2 TI2V-5B tiny VAE (TAEHV taew2_2 / lighttaew2_2): it is a Wan2.1"),
    ]
    for path, space, expect in cases:
        with pytest.raises(CheckpointError) as info:
            inspect_tiny_vae(path, space=space)
        assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("case, expect", [
    ("super", r"'super' decoder \(taew2_2_super / taehv1_5_super\), which lightx2v does not implement"),
    ("patch1_32", r"decoder\.22\.weight has shape \(3, 64, 3, 3\), expected \(12, 64, 3, 3\)"),
    ("taeltx", r"decoder\.1\.weight has shape \(256, 128, 3, 3\), expected \(256, 32, 3, 3\) \(128 latent channels: "
               r"taeltx_2"),
    ("missing", r"no tensor decoder\.4\.conv\.2\.weight \(1 decoder tensors missing\)"),
])
def test_wrong_files_are_one_line_checkpoint_errors(case, expect, tmp_path):
    sd = {k: v.half() for k, v in _weights("taehv1_5").items()}
    if case == "super":
        sd["decoder.0.weight"] = torch.zeros(512, 32, 1, 1, dtype=torch.half)
    elif case == "patch1_32":
        sd["decoder.22.weight"], sd["decoder.22.bias"] = torch.zeros(3, 64, 3, 3).half(), torch.zeros(3).half()
    elif case == "taeltx":
        sd["decoder.1.weight"] = torch.zeros(256, 128, 3, 3).half()
    else:
        sd.pop("decoder.4.conv.2.weight")
    path = _save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=expect) as info:
        inspect_tiny_vae(path, space="hunyuanvideo-1.5")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path} is not a HunyuanVideo-1.5 tiny VAE (TAEHV taehv1_5 / lighttaehy1_5): ")


def test_a_kind_of_another_space_is_refused(tmp_path):
    path = _save({k: v.half() for k, v in _weights("taehv1_5").items()}, tmp_path / "t.pth")
    with pytest.raises(InputError, match="tiny VAE kind taew2_1 is for Wan2.1 latents; this model's are "
                                         "HunyuanVideo-1.5's: taehv1_5 or lighttaehy1_5") as info:
        inspect_tiny_vae(path, kind="taew2_1", space="hunyuanvideo-1.5")
    assert info.value.field == "tiny_vae_kind"
    with pytest.raises(CheckpointError, match=r"tiny VAE file not found: .*expected taehv1_5\.pth"):
        inspect_tiny_vae(tmp_path / "none.pth", space="hunyuanvideo-1.5")
