"""The Qwen-Image MMDiT against diffusers' QwenImageTransformer2DModel (the oracle) on identical random
weights: text-to-image, the edit models' condition images along the sequence (several: Edit-2509 /
2511), Edit-2511's zero_cond_t; then the config from transformer/config.json, the released 20B
names and shapes, and what the engine reads (int8 quantization, compiled blocks, the run_blocks seat).
"""

from __future__ import annotations

import functools

import pytest
import torch

from lightx2v.engine_config import CompileConfig
from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.qwen_image.dit import QwenImageDiT, QwenImageDiTConfig
from lightx2v.quant import apply_quant
from lightx2v.runtime.engine import compile_blocks

diffusers = pytest.importorskip("diffusers")
from diffusers import QwenImageTransformer2DModel  # noqa: E402

TOL = 1e-5  # fp32 parity: max abs error <= TOL * max |reference|
TINY = dict(in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=24, axes_dims_rope=(4, 6, 6))
T2I = [(1, 4, 6)]
EDIT = [(1, 4, 6), (1, 4, 4), (1, 2, 6)]  # the noisy image, then two condition images (Edit-2509 / 2511)


@functools.lru_cache(maxsize=None)
def _reference(zero_cond_t: bool) -> QwenImageTransformer2DModel:
    torch.manual_seed(0)
    ref = QwenImageTransformer2DModel(**QwenImageDiTConfig(**TINY, zero_cond_t=zero_cond_t).to_diffusers()).eval()
    with torch.no_grad():  # every tensor random (diffusers zero-inits none we rely on, but be sure)
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref


def _ours(zero_cond_t: bool = False) -> QwenImageDiT:
    with torch.device("meta"):
        model = QwenImageDiT(QwenImageDiTConfig(**TINY, zero_cond_t=zero_cond_t))
    model.load_state_dict(_reference(zero_cond_t).state_dict(), assign=True, strict=True)
    return model


def _inputs(segments, batch: int = 2, txt_len: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n = sum(f * h * w for f, h, w in segments)
    x = torch.randn(batch, n, TINY["in_channels"], generator=g)
    ctx = torch.randn(batch, txt_len, TINY["joint_attention_dim"], generator=g)
    t = torch.tensor([700.0, 250.0][:batch])
    return x, t, ctx


def _diffusers_out(ref, x, t, ctx, segments):
    with torch.no_grad():
        out = ref(hidden_states=x, encoder_hidden_states=ctx, timestep=t / 1000, img_shapes=[segments] * x.shape[0],
                  return_dict=False)[0]
    return out[:, : segments[0][0] * segments[0][1] * segments[0][2]]  # the edit pipelines keep the first segment


def _close(out, ref):
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), err


@pytest.mark.parametrize("segments, zero_cond_t", [(T2I, False), (EDIT, False), (EDIT, True), (T2I, True)])
def test_matches_diffusers(segments, zero_cond_t):
    x, t, ctx = _inputs(segments)
    with torch.no_grad():
        out = _ours(zero_cond_t)(x, t, ctx, segments)
    _close(out, _diffusers_out(_reference(zero_cond_t), x, t, ctx, segments))


def test_zero_cond_t_modulates_only_the_condition_tokens_with_timestep_0():
    """Same weights with zero_cond_t on and off: equal with no condition image, different with one."""
    on, off = _ours(True), _ours(False)
    off.load_state_dict(on.state_dict())
    with torch.no_grad():
        x, t, ctx = _inputs(T2I)
        _close(on(x, t, ctx, T2I), off(x, t, ctx, T2I))  # not bit-equal: the modulation GEMM sees 2 rows
        x, t, ctx = _inputs(EDIT)
        assert (on(x, t, ctx, EDIT) - off(x, t, ctx, EDIT)).abs().max() > 1e-3


def test_condition_images_change_the_prediction_and_the_text_length_is_free():
    model = _ours()
    x, t, ctx = _inputs(EDIT, txt_len=11)
    with torch.no_grad():
        out = model(x, t, ctx, EDIT)
        x2 = x.clone()
        x2[:, 24:] = torch.randn_like(x2[:, 24:])  # other condition images, same noisy image
        assert (model(x2, t, ctx, EDIT) - out).abs().max() > 1e-3
    _close(out, _diffusers_out(_reference(False), x, t, ctx, EDIT))
    assert len(model.rope_cache) == 1


def test_released_names_and_shapes_at_20b():
    """The released 20B config: our meta-built model has diffusers' keys and shapes exactly."""
    with torch.device("meta"):
        ours = QwenImageDiT(QwenImageDiTConfig())
        ref = QwenImageTransformer2DModel()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert sum(p.numel() for p in ours.parameters()) == 20_430_401_088
    assert QwenImageDiT.key_from_diffusers("transformer_blocks.3.img_mod.1.weight") == "transformer_blocks.3.img_mod.1.weight"


def test_strict_load_names_a_missing_key():
    sd = dict(_reference(False).state_dict())
    del sd["transformer_blocks.1.attn.norm_added_k.weight"]
    with torch.device("meta"):
        model = QwenImageDiT(QwenImageDiTConfig(**TINY))
    with pytest.raises(RuntimeError, match="norm_added_k"):
        model.load_state_dict(sd, assign=True, strict=True)


# ---------------------------------------------------------------- config


QWEN_IMAGE_JSON = {  # Qwen/Qwen-Image transformer/config.json (its fields)
    "_class_name": "QwenImageTransformer2DModel", "_diffusers_version": "0.34.0.dev0", "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56], "guidance_embeds": False, "in_channels": 64, "joint_attention_dim": 3584,
    "num_attention_heads": 24, "num_layers": 60, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 768,
}


def test_config_from_released_files():
    assert QwenImageDiTConfig.from_diffusers(QWEN_IMAGE_JSON) == QwenImageDiTConfig()
    edit_2511 = QwenImageDiTConfig.from_diffusers({**QWEN_IMAGE_JSON, "zero_cond_t": True})
    assert edit_2511.zero_cond_t and edit_2511.dim == 3072 and edit_2511.out_features == 64
    tiny = QwenImageDiTConfig.from_diffusers({**QwenImageDiTConfig(**TINY).to_diffusers(), "out_channels": None})
    assert tiny.out_channels == TINY["in_channels"] and tiny.axes_dims_rope == (4, 6, 6)


@pytest.mark.parametrize("change, match", [
    ({"rope_theta": 256}, "unknown field 'rope_theta'"),
    ({"use_layer3d_rope": True}, "use_layer3d_rope = True: Qwen-Image-Layered"),
    ({"use_additional_t_cond": True}, "use_additional_t_cond"),
    ({"guidance_embeds": True}, "guidance_embeds"),
    ({"axes_dims_rope": [16, 56, 48]}, "must sum to attention_head_dim 128"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"zero_cond_t": "yes"}, "zero_cond_t must be true or false"),
    ({"_class_name": "FluxTransformer2DModel"}, "expected a QwenImageTransformer2DModel"),
])
def test_config_refuses_by_name(change, match):
    with pytest.raises(CheckpointError, match=match):
        QwenImageDiTConfig.from_diffusers({**QWEN_IMAGE_JSON, **change})


# ---------------------------------------------------------------- inputs


def test_inputs_are_checked():
    model = _ours()
    x, t, ctx = _inputs(EDIT)
    with pytest.raises(InputError, match=r"x must be \[B, 24, 16\]"):
        model(x, t, ctx, T2I)
    with pytest.raises(InputError, match="t must be"):
        model(x, t[:1], ctx, EDIT)
    with pytest.raises(InputError, match="context must be"):
        model(x, t, ctx[..., :8], EDIT)
    with pytest.raises(InputError, match="segments"):
        model(x, t, ctx, [(1, 0, 6)])


# ---------------------------------------------------------------- what the engine reads


def test_int8_quantization_stays_close_to_float():
    x, t, ctx = _inputs(EDIT)
    with torch.no_grad():
        ref = _ours(True)(x, t, ctx, EDIT)
        model = apply_quant(_ours(True), "w8a8-int8", compute_dtype=torch.float32)
        quantized = [n for n, m in model.named_modules() if type(m).__name__ == "QuantLinear"]
        assert len(quantized) == 2 * 14  # every linear of both blocks (8 attention, 4 MLP, 2 modulation); embeddings and head in float
        assert not any(n.startswith(("img_in", "txt_in", "proj_out", "norm_out", "time_text")) for n in quantized)
        out = model(x, t, ctx, EDIT)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel


def test_compiled_blocks_give_the_same_output():
    # one small shape keeps dynamo's tracing short (the test's cost on a shared 2-core machine)
    model = _ours(True)
    x, t, ctx = _inputs(EDIT, batch=1, txt_len=3)
    with torch.no_grad():
        eager = model(x, t, ctx, EDIT)
        assert compile_blocks(model, CompileConfig(enabled=True, backend="aot_eager")) == 2
        compiled = model(x, t, ctx, EDIT)
    assert all(b._compiled_call_impl is not None for b in model.transformer_blocks)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_run_blocks_seat_hooks_and_runner():
    model = _ours(True)
    x, t, ctx = _inputs(EDIT)
    calls = []

    class Hooks:
        def before_block(self, i):
            calls.append(("before", i))

        def after_block(self, i):
            calls.append(("after", i))

    def runner(m, h, **kw):
        calls.append(("runner", tuple(kw["e"].shape), tuple(kw["e0"].shape), kw["split"]))
        return m.run_blocks(h, **kw)

    with torch.no_grad():
        plain = model(x, t, ctx, EDIT)
        model.block_hooks, model.block_runner = Hooks(), runner
        hooked = model(x, t, ctx, EDIT)
    assert calls == [("runner", (2, 1, 32), (2, 2, 32), 24), ("before", 0), ("after", 0), ("before", 1), ("after", 1)]
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    assert {"transformer_blocks"} == set(QwenImageDiT._repeated_blocks)



def test_bf16_load_keeps_the_declared_fp32_and_errs_no_more_than_diffusers_bf16():
    """Loaded through load_into in bf16 (the declared params kept fp32): against the fp32 reference, no
    further off than diffusers run in bf16 (ours keeps fp32 streams; these random weights amplify
    rounding, ~0.3 relative for both, so only the comparison is meaningful)."""
    import copy

    from lightx2v.loading.state_dict import load_into

    ref32 = _reference(True)
    with torch.device("meta"):
        model = QwenImageDiT(QwenImageDiTConfig(**TINY, zero_cond_t=True))
    load_into(model, ref32.state_dict(), dtype=torch.bfloat16, keep_fp32=QwenImageDiT._keep_in_fp32)
    assert model.txt_norm.weight.dtype == torch.float32 and model.norm_out.linear.weight.dtype == torch.float32
    assert model.transformer_blocks[0].img_mod[1].weight.dtype == torch.bfloat16
    x, t, ctx = _inputs(EDIT)
    with torch.no_grad():
        out = model(x, t, ctx, EDIT)
    want = _diffusers_out(ref32, x, t, ctx, EDIT)
    theirs = _diffusers_out(copy.deepcopy(ref32).to(torch.bfloat16), x.bfloat16(), t, ctx.bfloat16(), EDIT).float()

    def rel(a):
        return ((a - want).norm() / want.norm()).item()

    assert out.dtype == torch.float32 and 0 < rel(out) <= 1.1 * rel(theirs), (rel(out), rel(theirs))
