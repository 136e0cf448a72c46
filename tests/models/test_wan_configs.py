"""Every field a Wan config states is honoured or refused by name; omitted fields come from the weights.

The oracles are diffusers' own tiny Wan configurations (tests/pipelines/wan/test_wan.py and
test_wan_image_to_video.py of diffusers): a transformer with rope_max_seq_len 32 and 12-wide
heads, an I2V / FLF2V transformer with image_dim 4 and no added_kv_proj_dim (the image tokens go
through the text key/value projections) next to a 4-wide CLIP, and a VAE of base_dim 3,
dim_mult [1, 1, 1, 1], num_res_blocks 1. Each is built by diffusers / transformers with random
weights, renamed to the official keys, loaded into our modules, and the outputs compared.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.state_dict import load_into, rename
from lightx2v.models.wan.dit import WanDiTConfig, WanModel, dit_key_from_diffusers
from lightx2v.models.wan.tiny import randomize_

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: E402

# diffusers tests/pipelines/wan/test_wan.py, get_dummy_components
DIFFUSERS_T2V = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32,
    freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
# test_wan_image_to_video.py: I2V (image_size 32, patch 1: 1025 CLIP tokens) and FLF2V (image_size 4: 17 tokens)
DIFFUSERS_I2V = dict(DIFFUSERS_T2V, in_channels=36, image_dim=4)
DIFFUSERS_FLF2V = dict(DIFFUSERS_I2V, pos_embed_seq_len=2 * (4 * 4 + 1))
CLIP_I2V = dict(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                intermediate_size=16, patch_size=1)
CLIP_FLF2V = dict(CLIP_I2V, image_size=4)
DIFFUSERS_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True])


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err, scale = (out.float() - ref.float()).abs().max().item(), ref.float().abs().max().item()
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol} * {scale:.3e}"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- DiT


def _transformer(seed: int = 0, **kwargs) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return randomize_(WanTransformer3DModel(**kwargs), seed=seed).eval()


def _ours(diff: WanTransformer3DModel, config: WanDiTConfig) -> WanModel:
    with torch.device("meta"):
        model = WanModel(config)
    sd = rename(diff.state_dict(), dit_key_from_diffusers)
    return load_into(model, sd, keep_fp32=WanModel._keep_in_fp32).eval()


def _pad(context: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([context, context.new_zeros(context.shape[0], length - context.shape[1], context.shape[2])], 1)


def _clip_config(**kwargs):
    from transformers import CLIPVisionConfig as HFConfig

    from lightx2v.models.wan.clip import CLIPVisionConfig

    return CLIPVisionConfig.from_transformers(HFConfig(**kwargs).to_dict())


def test_diffusers_tiny_t2v_config_is_read() -> None:
    cfg = WanDiTConfig.from_diffusers(_transformer(**DIFFUSERS_T2V).config)
    assert (cfg.model_type, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.freq_dim, cfg.ffn_dim, cfg.text_dim) == (
        "t2v", 24, 2, 12, 256, 32, 32)
    assert cfg.rope_max_seq_len == 32 and cfg.text_len == 512


def test_diffusers_tiny_t2v_matches_diffusers() -> None:
    diff = _transformer(**DIFFUSERS_T2V)
    cfg = WanDiTConfig.from_diffusers(diff.config)
    ours = _ours(diff, cfg)
    g = torch.Generator().manual_seed(1)
    # grid (3, 4, 32): the width axis uses all 32 RoPE positions diffusers precomputed
    x, t, ctx = torch.randn(1, 16, 3, 8, 64, generator=g), torch.tensor([637.0]), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        ref = diff(x, t, _pad(ctx, cfg.text_len), return_dict=False)[0]
        out = ours(x, t, ctx)
    _close(out, ref)


def test_rope_grid_overflow_is_refused() -> None:
    cfg = WanDiTConfig.from_diffusers(DIFFUSERS_T2V)
    with torch.device("meta"):
        model = WanModel(cfg)  # the inputs are checked before any weight is touched
    x, t, ctx = torch.zeros(1, 16, 2, 8, 66), torch.tensor([500.0]), torch.zeros(1, 4, 32)
    with pytest.raises(InputError, match=r"33 positions on the width axis.*rope_max_seq_len = 32") as exc:
        model(x, t, ctx)
    _one_line(exc)
    with pytest.raises(InputError, match="frame axis"):
        model(torch.zeros(1, 16, 33, 2, 2), t, ctx)
    # the default bound is the reference's 1024 positions
    assert WanDiTConfig.from_diffusers({k: v for k, v in DIFFUSERS_T2V.items() if k != "rope_max_seq_len"}
                                       ).rope_max_seq_len == 1024


def _i2v_inputs(n_img: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    y = torch.randn(1, 20, 2, 4, 6, generator=g)
    ctx = torch.randn(1, 9, 32, generator=g)
    clip = torch.randn(1, n_img, 4, generator=g)
    return x, y, torch.tensor([250.0]), ctx, clip


def test_diffusers_tiny_i2v_matches_diffusers() -> None:
    diff = _transformer(**DIFFUSERS_I2V)
    clip = _clip_config(**CLIP_I2V)
    assert (clip.dim, clip.num_tokens) == (4, 32 * 32 + 1)
    cfg = WanDiTConfig.from_diffusers(diff.config)
    assert (cfg.model_type, cfg.image_dim, cfg.image_kv_proj, cfg.clip_tokens) == ("i2v", 4, False, 257)
    cfg = cfg.with_image_encoder(clip)
    assert cfg.clip_tokens == cfg.image_tokens == 1025
    ours = _ours(diff, cfg)
    assert not hasattr(ours.blocks[0].cross_attn, "k_img")  # diffusers: added_kv_proj_dim None
    x, y, t, ctx, fea = _i2v_inputs(1025)
    with torch.no_grad():
        ref = diff(torch.cat([x, y], 1), t, _pad(ctx, 512), encoder_hidden_states_image=fea, return_dict=False)[0]
        out = ours(x, t, ctx, clip_fea=fea, y=y)
    _close(out, ref)
    with pytest.raises(InputError, match=r"clip_fea must be \[B, 1025, 4\]"):
        ours(x, t, ctx, clip_fea=fea[:, :257], y=y)
    with pytest.raises(InputError, match=r"clip_fea must be \[B, 1025, 4\]"):
        ours(x, t, ctx, clip_fea=torch.zeros(1, 1025, 1280), y=y)


def test_diffusers_tiny_flf2v_matches_diffusers() -> None:
    diff = _transformer(**DIFFUSERS_FLF2V)
    cfg = WanDiTConfig.from_diffusers(diff.config)
    assert (cfg.model_type, cfg.clip_tokens, cfg.image_tokens, cfg.image_dim) == ("flf2v", 17, 34, 4)
    assert cfg.with_image_encoder(_clip_config(**CLIP_FLF2V)) == cfg
    with pytest.raises(CheckpointError, match="1025 tokens per image.*covers 17"):
        cfg.with_image_encoder(_clip_config(**CLIP_I2V))
    with pytest.raises(CheckpointError, match="8 wide; the DiT's image_dim is 4"):
        cfg.with_image_encoder(_clip_config(**dict(CLIP_FLF2V, hidden_size=8)))
    ours = _ours(diff, cfg)
    x, y, t, ctx, fea = _i2v_inputs(34)
    with torch.no_grad():
        # diffusers takes the first and last frame's tokens as [2, 17, 4] per sample
        ref = diff(torch.cat([x, y], 1), t, _pad(ctx, 512), encoder_hidden_states_image=fea.view(2, 17, 4),
                   return_dict=False)[0]
        out = ours(x, t, ctx, clip_fea=fea, y=y)
    _close(out, ref)


def test_diffusers_tiny_clip_tokens_match_transformers() -> None:
    """The tiny CLIPVisionModelWithProjection loads (its unused projection dropped) and gives the
    penultimate hidden states diffusers' pipeline feeds the DiT: 1025 tokens of width 4."""
    from transformers import CLIPVisionConfig as HFConfig
    from transformers import CLIPVisionModelWithProjection

    from lightx2v.models.wan.clip import WanCLIPVision, clip_state_dict_from_transformers

    torch.manual_seed(0)
    hf = randomize_(CLIPVisionModelWithProjection(HFConfig(**CLIP_I2V)), seed=4).eval()
    cfg = _clip_config(**CLIP_I2V)
    with torch.device("meta"):
        ours = WanCLIPVision(cfg)
    load_into(ours, clip_state_dict_from_transformers(hf.state_dict()), dtype=torch.float32, what="image encoder")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        out = ours.eval()(pixels)
    assert out.shape == (2, 1025, 4)
    _close(out, ref)


# ---------------------------------------------------------------- official config.json + weights

# the config.json of Wan2.1-T2V-14B as released: no text_dim, patch_size, window_size, qk_norm, cross_attn_norm
RELEASED_T2V = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120, "eps": 1e-06,
                "ffn_dim": 13824, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 40,
                "num_layers": 40, "out_dim": 16, "text_len": 512}


def _official_shapes(cfg: WanDiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanModel(cfg).state_dict().items()}


def _small(**kw) -> WanDiTConfig:
    base = dict(model_type="t2v", in_dim=16, dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=32)
    return WanDiTConfig(**{**base, **kw})


def _released_json(cfg: WanDiTConfig) -> dict:
    """cfg written as the releases write it (the official WanModel's save: no text_dim etc.)."""
    return {**RELEASED_T2V, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim,
            "model_type": cfg.model_type, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers}


def test_official_config_without_text_dim_reads_it_from_the_weights() -> None:
    small = _small()
    raw = _released_json(small)
    assert "text_dim" not in raw
    assert WanDiTConfig.from_official(raw).text_dim == 4096  # no weights: the Wan2.1 value
    assert WanDiTConfig.from_official(raw, shapes=_official_shapes(small)) == small
    # omitted fields of other values are read too (patch size, qk / cross-attention norms, out_dim)
    odd = _small(patch_size=(1, 1, 2), qk_norm=False, cross_attn_norm=False, freq_dim=16, text_dim=24)
    got = WanDiTConfig.from_official({k: v for k, v in _released_json(odd).items() if k != "freq_dim"},
                                     shapes=_official_shapes(odd))
    assert got == odd


def test_official_config_contradicted_by_the_weights_is_refused_by_name() -> None:
    small = _small()
    with pytest.raises(CheckpointError, match=r"states text_dim 4096, but the weights have 32 \(text_embedding") as e:
        WanDiTConfig.from_official({**_released_json(small), "text_dim": 4096}, shapes=_official_shapes(small))
    _one_line(e)
    with pytest.raises(CheckpointError, match="states model_type 'i2v', but the weights have 't2v'"):
        WanDiTConfig.from_official({**_released_json(small), "model_type": "i2v", "in_dim": 36},
                                   shapes=_official_shapes(small))
    with pytest.raises(CheckpointError, match="lacks num_heads"):
        WanDiTConfig.from_official({k: v for k, v in _released_json(small).items() if k != "num_heads"},
                                   shapes=_official_shapes(small))


def test_official_image_fields_from_the_weights() -> None:
    i2v = _small(model_type="i2v", in_dim=36, image_dim=4, image_kv_proj=False)
    got = WanDiTConfig.from_official(_released_json(i2v), shapes=_official_shapes(i2v))
    assert got == i2v and got.clip_tokens == 257  # i2v: the weights do not tell (with_image_encoder does)
    flf2v = _small(model_type="flf2v", in_dim=36, image_dim=4, clip_tokens=17)
    got = WanDiTConfig.from_official(_released_json(flf2v), shapes=_official_shapes(flf2v))
    assert got == flf2v and got.image_tokens == 34 and got.image_kv_proj


def test_dit_files_reads_the_image_fields() -> None:
    from lightx2v.models.wan.dit_format import check_dit_matches, dit_config_from_state_dict

    flf2v = _small(model_type="flf2v", in_dim=36, image_dim=4, clip_tokens=17, image_kv_proj=False,
                   rope_max_seq_len=64)
    read = dit_config_from_state_dict(_official_shapes(flf2v), base=flf2v)
    assert read == flf2v
    with pytest.raises(CheckpointError, match="image_dim 4 vs 1280"):
        check_dit_matches(read, dataclasses.replace(flf2v, image_dim=1280), "file")


def test_official_config_round_trip_and_known_keys() -> None:
    default = _small()
    assert set(default.to_official()) == {"_class_name", "_diffusers_version", "model_type", "patch_size", "text_len",
                                          "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "out_dim", "num_heads",
                                          "num_layers", "window_size", "qk_norm", "cross_attn_norm", "eps"}
    odd = _small(model_type="flf2v", in_dim=36, image_dim=4, clip_tokens=17, image_kv_proj=False, rope_max_seq_len=32)
    written = odd.to_official()
    assert (written["image_dim"], written["clip_tokens"], written["image_kv_proj"], written["rope_max_seq_len"]) == (
        4, 17, False, 32)
    assert WanDiTConfig.from_official(written) == odd
    assert WanDiTConfig.from_official(written, shapes=_official_shapes(odd)) == odd
    # LightX2V distill keys and '_' metadata are accepted (read elsewhere)
    distill = {"denoising_step_list": [1000, 750, 500, 250], "sample_shift": 5, "enable_cfg": False,
               "sample_guide_scale": 6, "infer_steps": 4, "distill_method": "dmd2", "num_train_timesteps": 1000,
               "_name_or_path": "x"}
    assert WanDiTConfig.from_official({**default.to_official(), **distill}) == default


@pytest.mark.parametrize("key,value,match", [
    ("attention_window", 3, "unknown field 'attention_window'"),
    ("window_size", [256, 256], r"window_size \[256, 256\] \(local attention\) is not supported"),
    ("image_dim", 4, "image_dim 4 is set for a t2v model"),
    ("rope_max_seq_len", 0, "rope_max_seq_len must be a positive integer"),
])
def test_official_config_refusals(key, value, match) -> None:
    with pytest.raises(CheckpointError, match=match) as e:
        WanDiTConfig.from_official({**_small().to_official(), key: value})
    assert _one_line(e).startswith("official Wan config.json")


@pytest.mark.parametrize("overrides,match", [
    ({"foo": 1}, "unknown field 'foo'"),
    ({"window_size": [-1, -1]}, "unknown field 'window_size'"),
    ({"image_dim": 4, "added_kv_proj_dim": 8}, "added_kv_proj_dim 8 is not supported; expected 24"),
    ({"added_kv_proj_dim": 24}, "added_kv_proj_dim 24 without image_dim"),
    ({"image_dim": 4, "pos_embed_seq_len": 33}, "pos_embed_seq_len 33 is not supported"),
    ({"qk_norm": "rms_norm"}, "qk_norm 'rms_norm' is not supported"),
    ({"rope_max_seq_len": -4}, "rope_max_seq_len must be a positive integer"),
    ({"patch_size": [1, 2]}, "patch_size must have 3 entries"),
])
def test_diffusers_config_refusals(overrides, match) -> None:
    with pytest.raises(CheckpointError, match=match) as e:
        WanDiTConfig.from_diffusers({**DIFFUSERS_T2V, "_class_name": "WanTransformer3DModel", **overrides})
    _one_line(e)


def test_diffusers_config_json_round_trip() -> None:
    from lightx2v.models.wan.dit_format import diffusers_config_json

    for kw in (DIFFUSERS_T2V, DIFFUSERS_I2V, DIFFUSERS_FLF2V, dict(DIFFUSERS_FLF2V, added_kv_proj_dim=24)):
        cfg = WanDiTConfig.from_diffusers(kw)
        written = diffusers_config_json(cfg)
        assert WanDiTConfig.from_diffusers(written) == cfg
        theirs = WanTransformer3DModel.from_config(written).config  # diffusers accepts it as it is
        assert all(theirs[k] == (list(v) if isinstance(v, tuple) else v) for k, v in written.items()
                   if not k.startswith("_") and k != "patch_size")


# ---------------------------------------------------------------- VAE


def _vae_pair(config: dict):
    from lightx2v.models.wan.vae import WanVAE, WanVAEConfig

    torch.manual_seed(0)
    ref = randomize_(AutoencoderKLWan(**config), seed=6).eval()
    cfg = WanVAEConfig.from_diffusers(ref.config)
    with torch.device("meta"):
        ours = WanVAE(cfg)
    official = rename(ref.state_dict(), cfg.key_from_diffusers)
    load_into(ours, official, dtype=torch.float32, what="VAE")
    return ref, ours.eval(), cfg, official


@pytest.mark.parametrize("config", [DIFFUSERS_VAE, dict(DIFFUSERS_VAE, decoder_base_dim=4)], ids=["tiny", "decoder4"])
def test_diffusers_tiny_vae_matches_diffusers(config) -> None:
    from lightx2v.models.wan.infer import vae_config_from_state_dict

    ref, ours, cfg, official = _vae_pair(config)
    assert (cfg.dim, cfg.dim_mult, cfg.num_res_blocks) == (3, (1, 1, 1, 1), 1)
    assert cfg.decoder_dim == config.get("decoder_base_dim")
    assert vae_config_from_state_dict(official) == cfg  # the official layout (no config) reads the same
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    video = torch.rand(1, 3, 9, 16, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z = ours.encode(video)
        _close(z, (ref.encode(video).latent_dist.mean - mean) / std)
        _close(ours.decode(z), ref.decode(z * std + mean).sample)


@pytest.mark.parametrize("key,value,match", [
    ("foo", 1, "unknown field 'foo'"),
    ("attn_scales", [0.5], r"attn_scales \[0.5\] is not supported"),
    ("is_residual", True, "is_residual true is a Wan2.2-style"),
    ("patch_size", 2, "patch_size 2 is a Wan2.2-style"),
    ("in_channels", 12, "in_channels 12 is not supported"),
    ("out_channels", 4, "out_channels 4 is not supported"),
    ("scale_factor_spatial", 16, "scale_factor_spatial 16 does not fit the architecture, which gives 8"),
    ("scale_factor_temporal", 8, "scale_factor_temporal 8 does not fit"),
    ("clip_output", False, "clip_output False is not supported"),
    ("latents_std", [1.0] * 4, "latents_std has 4 values, expected z_dim = 16"),
    ("dim_mult", [1, 2], "temperal_downsample has 3 entries"),
])
def test_diffusers_vae_refusals(key, value, match) -> None:
    from lightx2v.models.wan.vae import WanVAEConfig

    full = dict(AutoencoderKLWan.from_config(DIFFUSERS_VAE).config)  # every field, as diffusers writes them
    with pytest.raises(CheckpointError, match=match) as e:
        WanVAEConfig.from_diffusers({**full, key: value})
    assert _one_line(e).startswith("diffusers VAE config.json")


def test_diffusers_vae_accepted_fields() -> None:
    from lightx2v.models.wan.vae import WanVAEConfig

    full = dict(AutoencoderKLWan.from_config(DIFFUSERS_VAE).config)
    base = WanVAEConfig.from_diffusers(full)
    same = {"dropout": 0.1, "patch_size": None, "clip_output": True, "decoder_base_dim": 3, "attn_scales": [],
            "scale_factor_temporal": None, "_name_or_path": "x"}
    for key, value in same.items():
        assert WanVAEConfig.from_diffusers({**full, key: value}) == base, key
