"""Wan2.2 DiTs as configurations of our WanModel, against diffusers' WanTransformer3DModel (the oracle).

TI2V-5B: 48 latent channels, no image branch, one timestep per token ([B, L]; 0 on the clean first
frame's tokens for image-to-video). I2V-A14B: 36 input channels (x + y), 16 out, no CLIP branch.
Tiny random weights; diffusers' state dict is renamed with `WanModel.key_from_diffusers`. Then the
configs: the official and diffusers config.json of both load, shapes alone tell both, and
contradictions are refused by name.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.state_dict import load_into, rename
from lightx2v.models.wan.dit import WanDiTConfig, WanModel, token_timesteps
from lightx2v.models.wan.dit_format import (
    WAN_DIT_FORMAT, check_dit_matches, describe_config, diffusers_config_json, diffusers_key_table,
    dit_config_from_state_dict,
)
from lightx2v.models.wan.tiny import randomize_

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

TOL = 1e-5  # fp32 parity: max abs error <= TOL * max |reference|
BASE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, text_dim=32, freq_dim=32, ffn_dim=64,
            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
TI2V = dict(BASE, in_channels=48, out_channels=48)          # TI2V-5B-like: diffusers has no image_dim
I2V22 = dict(BASE, in_channels=36, out_channels=16)         # I2V-A14B-like: no image_dim, no added_kv_proj_dim

# the released config.json of Wan2.2-TI2V-5B (facts: several copies agree; no text_dim, patch_size ...)
OFFICIAL_TI2V = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": 3072, "eps": 1e-06,
                 "ffn_dim": 14336, "freq_dim": 256, "in_dim": 48, "model_type": "ti2v", "num_heads": 24,
                 "num_layers": 30, "out_dim": 48, "text_len": 512}
OFFICIAL_I2V22 = {**OFFICIAL_TI2V, "dim": 5120, "ffn_dim": 13824, "in_dim": 36, "model_type": "i2v", "num_heads": 40,
                  "num_layers": 40, "out_dim": 16}
# diffusers' transformer configs of Wan2.2-TI2V-5B-Diffusers / I2V-A14B-Diffusers (convert_wan_to_diffusers.py)
DIFFUSERS_22 = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=13824,
                    freq_dim=256, in_channels=36, num_attention_heads=40, num_layers=40, out_channels=16,
                    patch_size=[1, 2, 2], qk_norm="rms_norm_across_heads", text_dim=4096, image_dim=None,
                    rope_max_seq_len=1024, pos_embed_seq_len=None, _class_name="WanTransformer3DModel")
DIFFUSERS_TI2V_5B = dict(DIFFUSERS_22, ffn_dim=14336, in_channels=48, num_attention_heads=24, num_layers=30,
                         out_channels=48)


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = (out.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
    assert err <= tol, f"max abs err {err:.3e} of max |ref| > {tol}"
    return err


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _pair(kwargs: dict, seed: int = 0) -> tuple[WanTransformer3DModel, WanModel]:
    torch.manual_seed(seed)
    diff = randomize_(WanTransformer3DModel(**kwargs), seed=seed).eval()
    with torch.device("meta"):
        ours = WanModel(WanDiTConfig.from_diffusers(diff.config))
    sd = rename(diff.state_dict(), WanModel.key_from_diffusers)
    return diff, load_into(ours, sd, keep_fp32=WanModel._keep_in_fp32).eval()


def _pad(context: torch.Tensor, length: int = 512) -> torch.Tensor:
    return torch.cat([context, context.new_zeros(context.shape[0], length - context.shape[1], context.shape[2])], 1)


def _inputs(b: int, channels: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, channels, 3, 4, 6, generator=g)  # token grid (3, 2, 3): 18 tokens, 6 per frame
    context = torch.randn(b, 7, 32, generator=g)
    return x, context


# ---------------------------------------------------------------- TI2V: per-token timesteps


def test_ti2v_first_frame_clean_matches_diffusers() -> None:
    diff, ours = _pair(TI2V)
    assert ours.config.model_type == "ti2v" and not ours.config.has_image_branch
    x, context = _inputs(2, 48)
    grid = ours.token_grid(x.shape[2:])
    t = token_timesteps(torch.tensor([637.0, 250.0]), grid, clean_frames=1)  # TI2V image-to-video
    assert t.shape == (2, 18) and (t[:, :6] == 0).all() and (t[0, 6:] == 637).all() and (t[1, 6:] == 250).all()
    with torch.no_grad():
        ref = diff(x, t, _pad(context), return_dict=False)[0]
        out = ours(x, t, context)
    assert out.dtype == torch.float32
    _close(out, ref)


def test_ti2v_arbitrary_token_timesteps_match_diffusers() -> None:
    """Every token its own timestep (distinct values, repeats across samples): the per-value
    embedding gathered per token is the reference's per-token embedding."""
    diff, ours = _pair(TI2V, seed=2)
    x, context = _inputs(2, 48, seed=3)
    t = torch.randint(0, 1000, (2, 18), generator=torch.Generator().manual_seed(4)).float()
    t[1, :5] = t[0, :5]
    with torch.no_grad():
        ref = diff(x, t, _pad(context), return_dict=False)[0]
        out = ours(x, t, context)
    _close(out, ref)
    e, e0 = ours.embed_time(t)
    assert e.shape == (2, 18, 64) and e0.shape == (2, 18, 6, 64) and e0.dtype == torch.float32


def test_shared_timestep_equals_per_token_and_stays_per_sample() -> None:
    _, ours = _pair(TI2V)
    x, context = _inputs(2, 48)
    t = torch.tensor([999.0, 437.5])
    per_token = token_timesteps(t, ours.token_grid(x.shape[2:]))
    assert torch.equal(per_token, t[:, None].expand(2, 18))
    with torch.no_grad():
        shared = ours(x, t, context)
        tokens = ours(x, per_token, context)
    _close(shared, tokens, tol=1e-6)
    e, e0 = ours.embed_time(t)  # [B]: one modulation per sample, broadcast (no per-token expansion)
    assert e.shape == (2, 1, 64) and e0.shape == (2, 1, 6, 64)


def test_bad_timesteps_are_named() -> None:
    _, ours = _pair(TI2V)
    x, context = _inputs(1, 48)
    for t in (torch.zeros(1, 17), torch.zeros(2), torch.zeros(1, 3, 6)):
        with pytest.raises(InputError, match=r"t must be \[B\] = \[1\] or \[B, L\] = \[1, 18\]") as e:
            ours(x, t, context)
        _one_line(e)
    with pytest.raises(InputError, match="clean_frames <= 3"):
        token_timesteps(torch.tensor([1.0]), (3, 2, 3), clean_frames=4)


# ---------------------------------------------------------------- I2V-A14B: y only, no CLIP branch


def test_i2v_without_image_branch_matches_diffusers() -> None:
    diff, ours = _pair(I2V22, seed=5)
    cfg = ours.config
    assert (cfg.model_type, cfg.in_dim, cfg.out_dim, cfg.image_dim, cfg.image_tokens) == ("i2v", 36, 16, None, 0)
    assert not hasattr(ours, "img_emb") and not hasattr(ours.blocks[0].cross_attn, "k_img")
    assert set(diffusers_key_table(cfg)) == set(ours.state_dict())
    assert set(diffusers_key_table(cfg).values()) == set(diff.state_dict())
    g = torch.Generator().manual_seed(6)
    x, y, context = torch.randn(2, 16, 2, 4, 6, generator=g), torch.randn(2, 20, 2, 4, 6, generator=g), \
        torch.randn(2, 9, 32, generator=g)
    t = torch.tensor([900.0, 120.0])
    with torch.no_grad():
        ref = diff(torch.cat([x, y], 1), t, _pad(context), return_dict=False)[0]
        out = ours(x, t, context, y=y)
    _close(out, ref)
    with pytest.raises(InputError, match="needs y") as e:
        ours(torch.cat([x, y], 1), t, context)
    _one_line(e)
    with pytest.raises(InputError, match="has no CLIP image branch; clip_fea must be None"):
        ours(x, t, context, clip_fea=torch.zeros(2, 257, 1280), y=y)


# ---------------------------------------------------------------- configs


def _shapes(cfg: WanDiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanModel(cfg).state_dict().items()}


def _tiny(**kw) -> WanDiTConfig:
    base = dict(model_type="ti2v", in_dim=48, out_dim=48, dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32,
                text_dim=32)
    return WanDiTConfig(**{**base, **kw})


def _released(cfg: WanDiTConfig, base: dict) -> dict:
    """cfg as the releases write config.json (no text_dim, patch_size, image fields ...)."""
    return {**base, **{k: getattr(cfg, k) for k in ("dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "model_type",
                                                       "num_heads", "num_layers")}}


def test_official_configs_load() -> None:
    ti2v = WanDiTConfig.from_official(OFFICIAL_TI2V)
    assert (ti2v.model_type, ti2v.dim, ti2v.ffn_dim, ti2v.num_heads, ti2v.head_dim, ti2v.num_layers, ti2v.in_dim,
            ti2v.out_dim, ti2v.image_tokens) == ("ti2v", 3072, 14336, 24, 128, 30, 48, 48, 0)
    assert describe_config(ti2v) == "Wan2.2 ti2v DiT (dim 3072, 30 layers)"
    # with the weights (what the official layout does): I2V-A14B's have no img_emb -> no CLIP branch
    tiny_ti2v = _tiny()
    assert WanDiTConfig.from_official(_released(tiny_ti2v, OFFICIAL_TI2V), shapes=_shapes(tiny_ti2v)) == tiny_ti2v
    tiny_i2v = _tiny(model_type="i2v", in_dim=36, out_dim=16, image_dim=None)
    got = WanDiTConfig.from_official(_released(tiny_i2v, OFFICIAL_I2V22), shapes=_shapes(tiny_i2v))
    assert got == tiny_i2v and not got.has_image_branch and got.needs_y
    assert describe_config(got).startswith("Wan2.2 ")
    # no weights: an i2v config keeps Wan2.1's CLIP branch unless it states image_dim null (to_official does)
    assert WanDiTConfig.from_official(OFFICIAL_I2V22).has_image_branch
    assert tiny_i2v.to_official()["image_dim"] is None
    assert WanDiTConfig.from_official(tiny_i2v.to_official()) == tiny_i2v
    assert WanDiTConfig.from_official(tiny_ti2v.to_official()) == tiny_ti2v


def test_diffusers_configs_load_and_round_trip() -> None:
    ti2v = WanDiTConfig.from_diffusers(DIFFUSERS_TI2V_5B)
    assert (ti2v.model_type, ti2v.dim, ti2v.num_heads, ti2v.num_layers, ti2v.in_dim, ti2v.out_dim) == (
        "ti2v", 3072, 24, 30, 48, 48)
    i2v = WanDiTConfig.from_diffusers(DIFFUSERS_22)
    assert (i2v.model_type, i2v.dim, i2v.in_dim, i2v.out_dim, i2v.image_dim, i2v.image_tokens) == (
        "i2v", 5120, 36, 16, None, 0)
    assert WanDiTConfig.from_diffusers({**DIFFUSERS_22, "in_channels": 16}).model_type == "t2v"  # T2V-A14B expert
    for cfg in (ti2v, i2v, WanDiTConfig.from_diffusers(TI2V), WanDiTConfig.from_diffusers(I2V22)):
        written = diffusers_config_json(cfg)
        assert WanDiTConfig.from_diffusers(written) == cfg
        theirs = WanTransformer3DModel.from_config(written).config if cfg.dim < 1000 else written
        assert theirs["image_dim"] is None and theirs["added_kv_proj_dim"] is None


def test_shapes_alone_tell_both() -> None:
    tiny_ti2v = _tiny()
    read = dit_config_from_state_dict(_shapes(tiny_ti2v))
    assert read == dataclasses.replace(tiny_ti2v, num_heads=read.num_heads)  # heads: 128-wide guess
    tiny_i2v = _tiny(model_type="i2v", in_dim=36, out_dim=16, image_dim=None)
    read = dit_config_from_state_dict(_shapes(tiny_i2v), base=tiny_i2v)
    assert read == tiny_i2v
    # t2v and ti2v have the same tensors: a 16-channel one reads as t2v, and the folder's config decides
    t2v16 = _tiny(model_type="t2v", in_dim=16, out_dim=16)
    ti2v16 = dataclasses.replace(t2v16, model_type="ti2v")
    assert dit_config_from_state_dict(_shapes(ti2v16)).model_type == "t2v"
    assert dit_config_from_state_dict(_shapes(ti2v16), base=ti2v16) == ti2v16
    check_dit_matches(dit_config_from_state_dict(_shapes(ti2v16)), ti2v16, "file")  # no error
    assert WAN_DIT_FORMAT.with_given(dit_config_from_state_dict(_shapes(ti2v16)), ti2v16) == ti2v16
    assert WanDiTConfig.from_official(_released(ti2v16, OFFICIAL_TI2V), shapes=_shapes(ti2v16)) == ti2v16


def test_image_encoder_check_accepts_no_clip() -> None:
    i2v = WanDiTConfig.from_diffusers(DIFFUSERS_22)
    assert i2v.with_image_encoder(None) is i2v
    assert WanDiTConfig.from_diffusers(DIFFUSERS_TI2V_5B).with_image_encoder(None).model_type == "ti2v"
    wan21 = dataclasses.replace(i2v, image_dim=1280)
    with pytest.raises(CheckpointError, match="has a CLIP image branch .*needs an image encoder") as e:
        wan21.with_image_encoder(None)
    _one_line(e)


@pytest.mark.parametrize("kw,match", [
    (dict(image_dim=4), "image_dim 4 is set for a ti2v model, which takes no image"),
    (dict(image_kv_proj=False), "image_kv_proj False is set for a ti2v model"),
    (dict(image_dim=None), "image_dim None is set for a ti2v model"),
    (dict(model_type="t2v", image_dim=None), "image_dim None is set for a t2v model"),
    (dict(model_type="flf2v", in_dim=36, out_dim=16, image_dim=None), "flf2v needs its CLIP image branch"),
    (dict(model_type="i2v", in_dim=36, out_dim=16, image_dim=None, clip_tokens=300),
     r"clip_tokens 300 is set for an i2v model without a CLIP image branch \(image_dim None\)"),
    (dict(model_type="s2v"), "unknown Wan model_type 's2v'"),
])
def test_contradictory_configs_are_refused_by_name(kw, match) -> None:
    with pytest.raises(CheckpointError, match=match) as e:
        _tiny(**kw)
    _one_line(e)


def test_weights_contradicting_the_config_are_refused_by_name() -> None:
    tiny_i2v = _tiny(model_type="i2v", in_dim=36, out_dim=16, image_dim=None)
    shapes = _shapes(tiny_i2v)
    with pytest.raises(CheckpointError, match=r"states image_dim 1280, but the weights have None \(img_emb") as e:
        WanDiTConfig.from_official({**_released(tiny_i2v, OFFICIAL_I2V22), "image_dim": 1280}, shapes=shapes)
    _one_line(e)
    with pytest.raises(CheckpointError, match="states model_type 'ti2v', but the weights have 'i2v'"):
        WanDiTConfig.from_official({**_released(tiny_i2v, OFFICIAL_I2V22), "model_type": "ti2v"}, shapes=shapes)
    with pytest.raises(CheckpointError, match="image_dim None vs 1280"):
        check_dit_matches(dit_config_from_state_dict(shapes), dataclasses.replace(tiny_i2v, image_dim=1280), "file")
    with pytest.raises(CheckpointError, match="added_kv_proj_dim 5120 without image_dim"):
        WanDiTConfig.from_diffusers({**DIFFUSERS_22, "added_kv_proj_dim": 5120})
