"""Fused QKV (lightx2v.runtime.fuse): one GEMM for q, k, v on views of one tensor, at load.

Fused and unfused give the same outputs (bit-identical on CPU fp32), the state_dict keeps its
keys and values and the weights are held once, hooked / quantized / offloaded layers are skipped
and said so, and a dynamic LoRA added after fusing is never silently ignored.
"""

from __future__ import annotations

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.runtime.fuse import fuse_qkv, unfuse_qkv
from tests.quant.test_quant_lora import _write_lora


def _model() -> WanModel:
    return randomize_(WanModel(tiny_dit_config()), seed=5).eval()


def _inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 16, 3, 4, 6, generator=g), torch.tensor([999.0, 437.5]), torch.randn(2, 7, 32, generator=g)


def _storage_bytes(model) -> int:
    seen = {}
    for t in model.state_dict().values():
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


@torch.no_grad()
def test_fused_equals_unfused_and_holds_the_weights_once():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nbytes = _storage_bytes(model)
    ref = model(*_inputs())
    assert fuse_qkv(model) == ["2 self-attention layers (q, k, v as one GEMM)"]
    out = model(*_inputs())
    assert torch.equal(out, ref)
    sd = model.state_dict()
    assert list(sd) == list(before) and all(torch.equal(sd[k], v) for k, v in before.items())
    assert _storage_bytes(model) == nbytes  # no second copy
    attn = model.blocks[0].self_attn
    c = attn.q.weight.shape[0]
    for i, layer in enumerate((attn.q, attn.k, attn.v)):  # the parameters are views into the fused tensors
        assert layer.weight.data_ptr() == attn.qkv_weight.data_ptr() + i * c * c * 4
        assert layer.bias.data_ptr() == attn.qkv_bias.data_ptr() + i * c * 4
    with torch.no_grad():  # an in-place write to q.weight (a LoRA merge) is a write to the fused tensor
        attn.q.weight.mul_(1.5)
    assert torch.equal(attn.qkv_weight[:c], attn.q.weight)
    assert fuse_qkv(model)[0] == "2 self-attention layers (q, k, v as one GEMM)"  # idempotent
    assert unfuse_qkv(model) == 2 and attn.qkv_weight is None
    assert attn.k.weight.untyped_storage().data_ptr() != attn.q.weight.untyped_storage().data_ptr()


@torch.no_grad()
def test_hooked_and_quantized_layers_are_skipped():
    from lightx2v.quant import apply_quant

    model = _model()
    model.blocks[0].self_attn.v.register_forward_hook(lambda m, a, o: o)
    assert fuse_qkv(model) == ["1 self-attention layers (q, k, v as one GEMM)", "1 skipped: hooked (dynamic LoRA)"]
    assert model.blocks[0].self_attn.qkv_weight is None
    nvfp4 = apply_quant(_model(), "w4a16-nvfp4", compute_dtype=torch.float32)
    assert fuse_qkv(nvfp4) == ["0 self-attention layers",
                               "2 skipped: quantized (w4a16-nvfp4: not one scale per output channel)"]


@torch.no_grad()
@pytest.mark.parametrize("scheme, exact", [("w8a8-int8", True), ("w8a16-int8", False), ("w8a8-fp8", False)])
def test_quantized_qkv_fuse_into_one_8bit_gemm(scheme, exact):
    from lightx2v.quant import apply_quant

    model, plain = (apply_quant(_model(), scheme, compute_dtype=torch.float32) for _ in range(2))
    before = _storage_bytes(model)
    assert fuse_qkv(model) == ["2 self-attention layers (q, k, v as one GEMM)"]
    attn = model.blocks[0].self_attn
    assert attn.qkv_weight.shape == (3 * 64, 64) and attn.qkv_scale.shape == (3 * 64, 1)
    assert attn.q.weight.data_ptr() == attn.qkv_weight.data_ptr()  # views: the weights are held once
    assert _storage_bytes(model) == before and set(model.state_dict()) == set(plain.state_dict())
    calls = []
    attn.q.register_forward_pre_hook(lambda m, a: calls.append("q"))  # a hook: that layer runs apart again
    y, ref = model(*_inputs()), plain(*_inputs())
    assert calls  # (the hooked block ran q/k/v apart; the other block ran fused)
    if exact:  # integer products, the same per-token activation scales: bit-identical
        assert torch.equal(y, ref)
    else:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # a LoRA merge after fusing (dequantize, merge, requantize in place) lands in the fused tensors
    w = attn.k.dequantize_weight() * 1.5
    attn.k.set_weight(w)
    torch.testing.assert_close(attn.qkv_weight[64:128].float() * attn.qkv_scale[64:128], w, rtol=0.02, atol=1e-3)
    assert unfuse_qkv(model) == 2 and attn.qkv_scale is None and attn.k.weight.data_ptr() != attn.q.weight.data_ptr()


@torch.no_grad()
def test_a_hook_added_after_fusing_is_not_ignored():
    model, plain = _model(), _model()
    fuse_qkv(model)

    def hook(m, args, out):
        return out + 0.25

    for m in (model, plain):
        m.blocks[1].self_attn.k.register_forward_hook(hook)
    out, ref = model(*_inputs()), plain(*_inputs())
    assert torch.equal(out, ref)
    assert model.blocks[1].self_attn.qkv_weight is not None  # still fused: used again once the hook goes


@torch.no_grad()
def test_moving_the_model_drops_the_fusion():
    model = _model()
    ref = model(*_inputs())
    fuse_qkv(model)
    model.to(torch.float64).to(torch.float32)  # new storage for every parameter: the views would be stale
    assert all(b.self_attn.qkv_weight is None for b in model.blocks)
    assert torch.equal(model(*_inputs()), ref)


# ---------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    _write_lora(path, "official")  # targets blocks.0.self_attn.q among others
    return path


def _gen(pipe):
    lat = torch.randn(pipe.pipeline.geometry.latent_shape(5, 32, 32), generator=torch.Generator().manual_seed(3))
    return pipe.generate(prompt="a fox", height=32, width=32, num_frames=5, num_inference_steps=2,
                         guidance_scale=3.0, latents=lat, output_type="latent").latents


def test_engine_fuses_when_asked_and_set_lora_after_load_acts(tiny_official_dir, lora_file):
    fused = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, fuse_qkv=True,
                                     progress=False)
    assert "fuse_qkv: dit: 2 self-attention layers (q, k, v as one GEMM)" in fused.pipeline.engine_log
    plain = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    assert not any(line.startswith("fuse_qkv") for line in plain.pipeline.engine_log)
    base = _gen(fused)
    torch.testing.assert_close(base, _gen(plain), rtol=0, atol=0)
    for pipe in (fused, plain):
        pipe.set_lora([(lora_file, 1.0)])  # hooks on blocks.0.self_attn.q, after fusing
    with_lora = _gen(fused)
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(with_lora, _gen(plain), rtol=0, atol=0)
    fused.set_lora([])
    torch.testing.assert_close(_gen(fused), base, rtol=0, atol=0)


def test_engine_skips_hooked_layers_and_offload(tiny_official_dir, lora_file):
    dyn = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, lora=[(lora_file, 1.0)],
                                   lora_mode="dynamic", fuse_qkv=True, progress=False)
    log = dyn.pipeline.engine_log
    assert "fuse_qkv: dit: 1 skipped: hooked (dynamic LoRA)" in log
    assert log.index("fuse_qkv: dit: 1 skipped: hooked (dynamic LoRA)") > max(
        i for i, line in enumerate(log) if line.startswith("lora_dynamic"))
    off = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, offload="model", fuse_qkv=True,
                                   progress=False)
    assert "fuse_qkv: dit: skipped (offload model moves the weights)" in off.pipeline.engine_log
    assert all(m.qkv_weight is None for m in off.pipeline.dit.modules() if hasattr(m, "qkv_weight"))


@torch.no_grad()
def test_layers_replaced_after_fusing_are_used():
    from lightx2v.quant import apply_quant

    model, plain = _model(), _model()
    fuse_qkv(model)
    for m in (model, plain):
        apply_quant(m, "w8a8-int8", compute_dtype=torch.float32)  # replaces q, k, v
    assert not any(b.self_attn.qkv_fused() for b in model.blocks)
    assert torch.equal(model(*_inputs()), plain(*_inputs()))
    assert fuse_qkv(model) == ["2 self-attention layers (q, k, v as one GEMM)"]  # the quantized layers, fused anew


@torch.no_grad()
def test_fused_block_compiles_in_one_graph():
    from lightx2v.config import CompileConfig
    from lightx2v.runtime.engine import compile_blocks

    model = _model()
    ref = model(*_inputs())
    fuse_qkv(model)
    torch._dynamo.reset()
    # fullgraph: a graph break is an error; compile_blocks guards on hooks (a new one recompiles)
    compile_blocks(model, CompileConfig(enabled=True, backend="aot_eager", fullgraph=True))
    assert torch.equal(model(*_inputs()), ref)
    model.blocks[0].self_attn.q.register_forward_hook(lambda m, a, o: o + 1.0)
    assert not torch.equal(model(*_inputs()), ref)
