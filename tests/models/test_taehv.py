"""The Wan2.1 tiny VAE (lightx2v.models.wan.taehv) against an independent reading of taehv.py.

The reference here is written from madebyollin/taehv's published `TAEHV` (its Wan2.1 configuration:
the two nn.Sequential layer lists and `apply_model_with_memblocks(parallel=True)`), in plain
functional ops on a state dict: it shares no code with the module. It gives the expected keys and
shapes of the released files and the reference outputs on random weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.taehv import TinyVAE, TinyVAEConfig, TinyVAEState, inspect_tiny_vae
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

# ---------------------------------------------------------------- the reference, from taehv.py's definition

# (kind, argument) per nn.Sequential index: conv (stride, bias), relu, clamp, up, tpool / tgrow (stride), mem
ENCODER = [("conv", (1, True)), ("relu", None)]
for _s in (2, 2, 1):
    ENCODER += [("tpool", _s), ("conv", (2, False)), ("mem", None), ("mem", None), ("mem", None)]
ENCODER += [("conv", (1, True))]
DECODER = [("clamp", None), ("conv", (1, True)), ("relu", None)]
for _s in (1, 2, 2):
    DECODER += [("mem", None), ("mem", None), ("mem", None), ("up", None), ("tgrow", _s), ("conv", (1, False))]
DECODER += [("relu", None), ("conv", (1, True))]
# (in, out) channels of each conv, in order; MemBlocks and TPool / TGrow keep their width
ENC_CONVS = [(3, 64), (64, 64), (64, 64), (64, 64), (64, 16)]
DEC_CONVS = [(16, 256), (256, 128), (128, 64), (64, 64), (64, 3)]


def reference_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    for part, layers, convs in (("encoder", ENCODER, ENC_CONVS), ("decoder", DECODER, DEC_CONVS)):
        convs, width = list(convs), None
        for i, (kind, arg) in enumerate(layers):
            p = f"{part}.{i}."
            if kind == "conv":
                n_in, width = convs.pop(0)
                out[p + "weight"] = (width, n_in, 3, 3)
                if arg[1]:
                    out[p + "bias"] = (width,)
            elif kind == "mem":
                out[p + "conv.0.weight"], out[p + "conv.0.bias"] = (width, 2 * width, 3, 3), (width,)
                for j in (2, 4):
                    out[p + f"conv.{j}.weight"], out[p + f"conv.{j}.bias"] = (width, width, 3, 3), (width,)
            elif kind == "tpool":
                out[p + "conv.weight"] = (width, width * arg, 1, 1)
            elif kind == "tgrow":
                out[p + "conv.weight"] = (width * arg, width, 1, 1)
    return out


def reference_apply(sd, part, x):
    """taehv's apply_model_with_memblocks(parallel=True): x [N, T, C, H, W] -> [N, T', C', H', W']."""
    n, t = x.shape[:2]
    x = x.reshape(n * t, *x.shape[2:])
    for i, (kind, arg) in enumerate(ENCODER if part == "encoder" else DECODER):
        p = f"{part}.{i}."
        if kind == "conv":
            x = F.conv2d(x, sd[p + "weight"], sd.get(p + "bias"), stride=arg[0], padding=1)
        elif kind == "relu":
            x = F.relu(x)
        elif kind == "clamp":
            x = torch.tanh(x / 3) * 3
        elif kind == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif kind == "tpool":
            x = F.conv2d(x.reshape(-1, arg * x.shape[1], *x.shape[2:]), sd[p + "conv.weight"])
        elif kind == "tgrow":
            c = x.shape[1]
            x = F.conv2d(x, sd[p + "conv.weight"]).reshape(-1, c, *x.shape[2:])
        else:  # MemBlock: past = the input one frame earlier, zeros first; skip is the identity (same width)
            frames = x.reshape(n, -1, *x.shape[1:])
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, : frames.shape[1]].reshape(x.shape)
            h = F.relu(F.conv2d(torch.cat([x, past], 1), sd[p + "conv.0.weight"], sd[p + "conv.0.bias"], padding=1))
            h = F.relu(F.conv2d(h, sd[p + "conv.2.weight"], sd[p + "conv.2.bias"], padding=1))
            h = F.conv2d(h, sd[p + "conv.4.weight"], sd[p + "conv.4.bias"], padding=1)
            x = F.relu(h + x)
    return x.reshape(n, -1, *x.shape[1:])


def reference_decode(sd, z):
    """taehv decode_video: latents NTCHW -> pixels NTCHW in [0, 1], the first 3 frames trimmed."""
    return reference_apply(sd, "decoder", z).clamp(0, 1)[:, 3:]


def reference_encode(sd, x):
    """taehv encode_video: pixels NTCHW in [0, 1], padded at the end to a multiple of 4 -> latents NTCHW."""
    if x.shape[1] % 4:
        x = torch.cat([x, x[:, -1:].repeat_interleave(4 - x.shape[1] % 4, dim=1)], 1)
    return reference_apply(sd, "encoder", x)


STATS = (torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1), torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1))


@pytest.fixture(scope="module")
def weights():
    """Random weights of the released architecture; the head's bias keeps pixels inside (0, 1) mostly."""
    model = randomize_(TinyVAE(), seed=3)
    with torch.no_grad():
        model.decoder[22].bias.fill_(0.5)
        model.decoder[22].weight.mul_(0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _model(weights, kind="taew2_1"):
    model = TinyVAE(TinyVAEConfig(kind=kind))
    model.load_state_dict(weights)
    return model.eval()


# ---------------------------------------------------------------- the module


def test_keys_and_shapes_are_the_released_files():
    ours = {k: tuple(v.shape) for k, v in TinyVAE().state_dict().items()}
    assert ours == reference_shapes()
    assert len(ours) == 128  # taew2_1.safetensors: 128 tensors, 11.3M parameters
    assert sum(p.numel() for p in TinyVAE().parameters()) == 11_315_539
    decoder_only = {k: tuple(v.shape) for k, v in TinyVAE(TinyVAEConfig(encoder=False)).state_dict().items()}
    assert decoder_only == {k: v for k, v in ours.items() if k.startswith("decoder.")}


@pytest.mark.parametrize("kind", ["taew2_1", "lighttaew2_1"])
def test_decode_matches_reference_in_chunks_and_at_once(weights, kind):
    z = torch.randn(2, 16, 3, 2, 3, generator=torch.Generator().manual_seed(0))  # normalized latents, NCTHW
    raw = z * STATS[1] + STATS[0] if kind == "lighttaew2_1" else z  # what the network itself decodes
    ref = reference_decode(weights, raw.transpose(1, 2)).transpose(1, 2) * 2 - 1  # -> NCTHW in [-1, 1]
    assert ref.shape == (2, 3, 9, 16, 24)  # 3 latents -> 4 * 2 + 1 frames, 8x space: the full VAE's count
    inside = ((ref > -1) & (ref < 1)).float().mean()
    assert inside > 0.5, inside  # the comparison is not of clamped values only
    model = _model(weights, kind)
    chunks = []
    out = model.decode(z, on_chunk=chunks.append)
    assert [c.shape[2] for c in chunks] == [1, 4, 4]  # as the full VAE's chunks: 1 frame, then 4 per latent
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5
    if kind == "taew2_1":
        assert (model.decode(z, chunk=0) - ref).abs().max() < 1e-5   # all latent frames at once
        assert (model.decode(z, chunk=2) - ref).abs().max() < 1e-5   # chunks of 2: memory carried across


def test_decode_state_is_reset_between_videos(weights):
    model = _model(weights)
    state = TinyVAEState()
    z1, z2 = torch.randn(2, 16, 2, 2, 3), torch.randn(2, 16, 2, 2, 3)  # the chunk shapes of the test above
    first = model.decode(z2, state=state)
    model.decode(z1, state=state)
    assert torch.equal(model.decode(z2, state=state), first)  # nothing of z1 leaks into z2's video
    assert state.memory == {} and state.trim == 0


@pytest.mark.parametrize("kind", ["taew2_1", "lighttaew2_1"])
def test_encode_matches_reference(weights, kind):
    video = torch.rand(1, 3, 9, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = reference_encode(weights, ((video + 1) / 2).transpose(1, 2)).transpose(1, 2)  # [1, 16, 3, 2, 3]
    if kind == "lighttaew2_1":  # its latents are the raw VAE's: ours are normalized as WanVAE.encode's
        ref = (ref - STATS[0]) / STATS[1]
    model = _model(weights, kind)
    out = model.encode(video)
    assert out.shape == (1, 16, 3, 2, 3) and out.dtype == torch.float32  # 4k + 1 frames -> k + 1 latents
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    assert (out - ref).abs().max() < tol
    if kind == "taew2_1":
        assert (model.encode(video, chunk=0) - ref).abs().max() < tol  # all frames at once


def test_bad_latents_and_video_are_one_line_errors(weights):
    model = _model(weights)
    with pytest.raises(InputError, match=r"latents \[B, 16, T, h, w\]"):
        model.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(InputError, match=r"video \[B, 3, T, H, W\]"):
        model.encode(torch.zeros(1, 4, 2, 8, 8))
    with pytest.raises(InputError, match="no encoder"):
        TinyVAE(TinyVAEConfig(encoder=False)).encode(torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(InputError, match="taew2_1, lighttaew2_1"):
        TinyVAEConfig(kind="taew2_3")  # (taew2_2 is a kind since the Wan2.2 / HunyuanVideo-1.5 variants)


# ---------------------------------------------------------------- files


def _save(sd, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def test_release_files_recognised_by_their_tensors(weights, tmp_path):
    # taew2_1 ships fp16; the same file widened to fp32 is still taew2_1 (every value an fp16 number)
    fp16 = {k: v.half() for k, v in weights.items()}
    a = inspect_tiny_vae(_save(fp16, tmp_path / "whatever.pth"))
    assert (a.kind, a.config.encoder) == ("taew2_1", True) and "float16" in a.reason
    b = inspect_tiny_vae(_save({k: v.float() for k, v in fp16.items()}, tmp_path / "lighttae_named.safetensors"))
    assert b.kind == "taew2_1" and "widened" in b.reason  # the name says lighttae: the tensors decide
    # lighttaew2_1 ships fp32 weights trained in fp32
    c = inspect_tiny_vae(_save(weights, tmp_path / "taew2_1.safetensors"))
    assert c.kind == "lighttaew2_1" and "trained in fp32" in c.reason
    assert inspect_tiny_vae(tmp_path / "taew2_1.safetensors", kind="taew2_1").kind == "taew2_1"  # an override
    # a decoder-only file loads (no encoder)
    d = inspect_tiny_vae(_save({k: v for k, v in fp16.items() if k.startswith("decoder.")}, tmp_path / "d.pth"))
    assert d.config.encoder is False


@pytest.mark.parametrize("case, expect", [
    ("taew2_2", r"decoder\.1\.weight has shape \(256, 48, 3, 3\), expected \(256, 16, 3, 3\) \(48 latent channels: taew2_2"),
    ("missing", r"no tensor decoder\.15\.conv\.0\.bias \(1 decoder tensors missing\)"),
    ("partial_encoder", r"no tensor encoder\.17\.bias"),
    ("extra", r"unexpected tensor 'decoder\.30\.weight'"),
    ("full_vae", r"unexpected tensor 'conv1\.bias'"),
    ("not_found", r"tiny VAE file not found"),
])
def test_wrong_files_are_one_line_checkpoint_errors(case, expect, weights, tmp_path):
    sd = {k: v.half() for k, v in weights.items()}
    if case == "taew2_2":
        sd["decoder.1.weight"] = torch.zeros(256, 48, 3, 3, dtype=torch.half)
    elif case == "missing":
        sd.pop("decoder.15.conv.0.bias")
    elif case == "partial_encoder":
        sd.pop("encoder.17.bias")
    elif case == "extra":
        sd["decoder.30.weight"] = torch.zeros(1)
    elif case == "full_vae":
        sd = {"conv1.weight": torch.zeros(32, 32, 1, 1, 1), "conv1.bias": torch.zeros(32)}
    path = tmp_path / "bad.safetensors"
    if case != "not_found":
        _save(sd, path)
    with pytest.raises(CheckpointError, match=expect) as info:
        inspect_tiny_vae(path)
    assert "\n" not in str(info.value)
    if case != "not_found":
        assert str(info.value).startswith(f"{path} is not a Wan2.1 tiny VAE (TAEHV taew2_1 / lighttaew2_1): ")
    with pytest.raises(InputError, match="kind must be one of"):
        inspect_tiny_vae(path, kind="taehv")
