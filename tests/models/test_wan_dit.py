"""Wan2.1 DiT parity with diffusers' WanTransformer3DModel (the oracle), on tiny random weights.

A diffusers model is built with every parameter re-drawn at random (norm weights and
modulations included, so nothing is trivially 0 or 1), its state dict is renamed with
`dit_key_from_diffusers`, loaded into our meta-built WanModel, and the outputs compared.
"""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.state_dict import load_into, rename
from lightx2v.models.wan.dit import WanDiTConfig, WanModel, dit_key_from_diffusers, sinusoidal_embedding
from lightx2v.models.wan.dit_blocks import rope_split
from lightx2v.ops.attention import resolve_attention, set_attention_backend

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

HEADS, HEAD_DIM = 2, 32  # head dim 32: rope split (12, 10, 10), uneven
TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


def _diffusers_model(seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # norm weights near 1 (but not 1), everything else (biases, modulations, pos_embed) small random
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + torch.randn_like(p) * 0.1)
    return model


def _ours(diff: WanTransformer3DModel, config: WanDiTConfig, dtype: torch.dtype | None = None) -> WanModel:
    with torch.device("meta"):
        model = WanModel(config)
    sd = rename(diff.state_dict(), dit_key_from_diffusers)
    return load_into(model, sd, dtype=dtype, keep_fp32=WanModel._keep_in_fp32).eval()


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    assert out.shape == ref.shape
    err, scale = (out.float() - ref.float()).abs().max().item(), ref.abs().max().item()
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol} * {scale:.3e}"


T2V = WanDiTConfig(
    model_type="t2v", in_dim=16, dim=HEADS * HEAD_DIM, ffn_dim=64, num_heads=HEADS, num_layers=2, text_len=16,
    freq_dim=32, text_dim=32, out_dim=16,
)


def _t2v_inputs(b: int, lc: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 3, 8, 12, generator=g)  # grid (3, 4, 6): non-square, every rope axis used
    t = torch.tensor([999.0, 437.5][:b])
    context = torch.randn(b, lc, 32, generator=g)
    return x, t, context


def _pad(context: torch.Tensor, length: int) -> torch.Tensor:
    # diffusers' transformer takes the context as given; its pipeline zero-pads to the text length
    return torch.cat([context, context.new_zeros(context.shape[0], length - context.shape[1], context.shape[2])], 1)


def test_config_from_diffusers_equals_hand_built() -> None:
    assert WanDiTConfig.from_diffusers(_diffusers_model().config) == WanDiTConfig(**{**T2V.__dict__, "text_len": 512})


def test_config_from_official_json() -> None:
    official = {  # the config.json of Wan2.1-T2V-14B
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824,
        "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 40, "num_layers": 40, "out_dim": 16,
        "text_len": 512,
    }
    cfg = WanDiTConfig.from_official(official)
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.text_dim, cfg.head_dim) == (
        5120, 40, 40, 13824, 4096, 128
    )
    assert cfg.patch_size == (1, 2, 2) and cfg.qk_norm and cfg.cross_attn_norm
    i2v = WanDiTConfig.from_official({**official, "model_type": "i2v", "in_dim": 36})
    assert i2v.image_tokens == 257 and i2v.in_dim == 36
    with pytest.raises(CheckpointError, match="num_heads"):
        WanDiTConfig.from_official({k: v for k, v in official.items() if k != "num_heads"})


def test_rope_split_matches_reference_formula() -> None:
    assert rope_split(128) == (44, 42, 42)  # d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)
    assert rope_split(32) == (12, 10, 10)


def test_sinusoidal_embedding_cos_first() -> None:
    emb = sinusoidal_embedding(8, torch.tensor([0.0, 3.0]))
    assert emb.dtype == torch.float64
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(3.0, dtype=torch.float64)))


@pytest.mark.parametrize("b,lc", [(1, 16), (1, 7), (2, 11)])
def test_t2v_matches_diffusers(b: int, lc: int) -> None:
    diff = _diffusers_model()
    ours = _ours(diff, T2V)
    x, t, context = _t2v_inputs(b, lc)
    with torch.no_grad():
        ref = diff(x, t, _pad(context, T2V.text_len), return_dict=False)[0]
        out = ours(x, t, context)
    assert out.dtype == torch.float32
    _close(out, ref)


def test_t2v_batch_equals_single_samples() -> None:
    diff = _diffusers_model()
    ours = _ours(diff, T2V)
    x, t, context = _t2v_inputs(2, 9)
    with torch.no_grad():
        both = ours(x, t, context)
        singles = torch.cat([ours(x[i : i + 1], t[i : i + 1], context[i : i + 1]) for i in range(2)])
    _close(both, singles)
    assert not torch.allclose(both[0], both[1])  # different t and context give different outputs


def test_attention_backends_agree_in_model() -> None:
    diff = _diffusers_model()
    ours = _ours(diff, T2V)
    x, t, context = _t2v_inputs(1, 16)
    with torch.no_grad():
        sdpa = ours(x, t, context)
        set_attention_backend(ours, resolve_attention("reference", "cpu", torch.float32))
        ref = ours(x, t, context)
    assert all(m.attn_backend.name == "reference" for m in ours.modules() if hasattr(m, "attn_backend"))
    _close(sdpa, ref)


def test_load_into_missing_key_is_named() -> None:
    diff = _diffusers_model()
    with torch.device("meta"):
        model = WanModel(T2V)
    sd = rename(diff.state_dict(), dit_key_from_diffusers)
    del sd["blocks.1.cross_attn.norm_k.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.cross_attn\.norm_k\.weight"):
        load_into(model, sd)


def test_unknown_diffusers_key_is_reported_not_dropped() -> None:
    assert dit_key_from_diffusers("blocks.0.attn1.to_qkv.weight") == "blocks.0.attn1.to_qkv.weight"
    assert dit_key_from_diffusers("blocks.3.attn2.norm_added_q.weight") is None
    diff = _diffusers_model()
    with torch.device("meta"):
        model = WanModel(T2V)
    sd = rename(diff.state_dict(), dit_key_from_diffusers)
    sd["blocks.0.attn1.to_qkv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected keys: blocks.0.attn1.to_qkv.weight"):
        load_into(model, sd)


def test_renamed_keys_equal_official_names() -> None:
    diff = _diffusers_model(added_kv_proj_dim=64, image_dim=1280, in_channels=36, pos_embed_seq_len=514)
    with torch.device("meta"):
        model = WanModel(WanDiTConfig.from_diffusers(diff.config))
    renamed = set(rename(diff.state_dict(), dit_key_from_diffusers))
    assert renamed == set(model.state_dict())
    for key in ("text_embedding.0.weight", "time_projection.1.bias", "blocks.1.modulation", "blocks.0.norm3.weight",
                "blocks.0.cross_attn.norm_k_img.weight", "blocks.0.ffn.2.weight", "head.head.weight",
                "head.modulation", "img_emb.proj.4.bias", "img_emb.emb_pos", "blocks.0.self_attn.o.bias"):
        assert key in renamed


def test_bf16_keeps_fp32_params_and_is_finite() -> None:
    diff = _diffusers_model()
    ours = _ours(diff, T2V, dtype=torch.bfloat16)
    params = dict(ours.named_parameters())
    for name in ("blocks.0.modulation", "head.modulation", "time_embedding.0.weight", "time_projection.1.weight"):
        assert params[name].dtype == torch.float32, name
    assert params["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    assert params["blocks.0.ffn.0.weight"].dtype == torch.bfloat16
    x, t, context = _t2v_inputs(2, 16)
    with torch.no_grad():
        out = ours(x, t, context.bfloat16())
        ref = _ours(diff, T2V)(x, t, context)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    _close(out, ref, tol=5e-2)  # bf16 weights: close to the fp32 run, not equal


def test_bad_inputs_are_named() -> None:
    ours = _ours(_diffusers_model(), T2V)
    x, t, context = _t2v_inputs(1, 16)
    with pytest.raises(InputError, match="channels"):
        ours(x[:, :4], t, context)
    with pytest.raises(InputError, match="<= 16"):
        ours(x, t, _pad(context, 20))
    with pytest.raises(InputError, match="divisible"):
        ours(x[..., :7], t, context)


# ---------------------------------------------------------------- I2V / FLF2V

I2V_DIFFUSERS = dict(added_kv_proj_dim=HEADS * HEAD_DIM, image_dim=1280, in_channels=36, out_channels=16)


def _i2v_inputs(b: int, n_img: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 2, 4, 6, generator=g)
    y = torch.randn(b, 20, 2, 4, 6, generator=g)
    t = torch.tensor([999.0, 250.0][:b])
    context = torch.randn(b, 9, 32, generator=g)
    clip = torch.randn(b, n_img, 1280, generator=g)
    return x, y, t, context, clip


@pytest.mark.parametrize("b", [1, 2])
def test_i2v_matches_diffusers(b: int) -> None:
    diff = _diffusers_model(**I2V_DIFFUSERS)
    cfg = WanDiTConfig.from_diffusers(diff.config)
    # diffusers splits the image tokens off as `context.shape[1] - 512`: text_len must be 512
    assert cfg.model_type == "i2v" and cfg.in_dim == 36 and cfg.text_len == 512
    ours = _ours(diff, cfg)
    x, y, t, context, clip = _i2v_inputs(b, 257)
    with torch.no_grad():
        ref = diff(torch.cat([x, y], 1), t, _pad(context, 512), encoder_hidden_states_image=clip, return_dict=False)[0]
        out = ours(x, t, context, clip_fea=clip, y=y)
    _close(out, ref)
    with pytest.raises(InputError, match="clip_fea and y"):
        ours(torch.cat([x, y], 1), t, context)


def test_flf2v_matches_diffusers() -> None:
    diff = _diffusers_model(**I2V_DIFFUSERS, pos_embed_seq_len=514)
    cfg = WanDiTConfig.from_diffusers(diff.config)
    assert cfg.model_type == "flf2v" and cfg.image_tokens == 514
    ours = _ours(diff, cfg)
    x, y, t, context, clip = _i2v_inputs(1, 514)
    with torch.no_grad():
        # diffusers (like the reference) takes the two frames' features as [2, 257, 1280] per sample
        ref = diff(torch.cat([x, y], 1), t, _pad(context, 512), encoder_hidden_states_image=clip.view(2, 257, 1280),
                   return_dict=False)[0]
        out = ours(x, t, context, clip_fea=clip, y=y)
    _close(out, ref)


# ---------------------------------------------------------------- bf16 precision vs diffusers


def _bf16_errors(device: str, attention: str) -> tuple[float, float]:
    """RMS error vs the fp32 run of (ours in bf16, diffusers in bf16 with its fp32-kept modules)."""
    diff = _diffusers_model().to(device)
    x, t, context = (a.to(device) for a in _t2v_inputs(2, 11, seed=4))
    ctx = _pad(context, T2V.text_len)
    ours = _ours(diff, T2V, dtype=torch.bfloat16)
    set_attention_backend(ours, resolve_attention(attention, device, torch.bfloat16))
    diff_bf16 = _diffusers_model().to(device, torch.bfloat16)
    for name, module in diff_bf16.named_modules():  # what from_pretrained(torch_dtype=bf16) keeps in fp32
        if any(k in name for k in WanTransformer3DModel._keep_in_fp32_modules):
            module.float()
    diff_bf16.scale_shift_table.data = diff_bf16.scale_shift_table.data.float()
    for block in diff_bf16.blocks:
        block.scale_shift_table.data = block.scale_shift_table.data.float()
    with torch.no_grad():
        ref = diff(x, t, ctx, return_dict=False)[0].float()
        ours_out = ours(x, t, context.bfloat16()).float()
        diff_out = diff_bf16(x.bfloat16(), t, ctx.bfloat16(), return_dict=False)[0].float()
    rms = lambda a: ((a - ref).pow(2).mean().sqrt() / ref.std()).item()  # noqa: E731
    return rms(ours_out), rms(diff_out)


def test_bf16_error_no_larger_than_diffusers_cpu() -> None:
    ours, theirs = _bf16_errors("cpu", "torch_sdpa")
    assert 0 < ours <= theirs, (ours, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_error_no_larger_than_diffusers_gpu() -> None:
    ours, theirs = _bf16_errors("cuda", "auto")
    assert 0 < ours <= theirs, (ours, theirs)


def test_rope_real_form_used_under_compile_matches_complex(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightx2v.models.wan.dit_blocks import apply_rope, rope_freqs

    torch.manual_seed(5)
    freqs = rope_freqs((2, 3, 4), 32, torch.device("cpu"))
    assert freqs.shape == (24, 1, 16, 2) and freqs.dtype == torch.float32
    x = torch.randn(2, 24, 2, 32)
    eager = apply_rope(x, freqs)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    real = apply_rope(x, freqs)
    assert (eager - real).abs().max() <= 1e-6 * x.abs().max()
    # rotation keeps the norm of each pair; position 0 is not rotated
    assert torch.allclose(eager.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(eager[:, 0], x[:, 0])
