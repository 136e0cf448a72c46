"""apply_engine: every transform together gives what applying them one by one, in the order, gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import CompileConfig, EngineConfig, LoraConfig
from lightx2v.errors import InputError
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.runtime.engine import ORDER, compile_blocks, quant_on_load
from tests.quant.test_quant_lora import _write_lora

PROMPT = "a fox in the snow"


def _latents(pipe, frames=5, h=32, w=32):
    shape = pipe.pipeline.geometry.latent_shape(frames, h, w)
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def _gen(pipe, **kw):
    return pipe.generate(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2,
                         guidance_scale=3.0, latents=_latents(pipe), output_type="latent", **kw).latents


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    _write_lora(path, "official")
    return path


def test_order_is_written_once():
    assert ORDER == ("lora_merge", "quant", "placement", "lora_dynamic", "fuse_qkv", "attention", "kernels", "chunking", "context_kv",
                     "parallel", "cache", "compile")


def test_quant_moves_into_loading_only_without_a_merge():
    assert quant_on_load(EngineConfig(device="cpu", quant="w8a8-int8")) == "w8a8-int8"
    merging = EngineConfig(device="cpu", quant="w8a8-int8", lora=LoraConfig((("x.safetensors", 1.0),)))
    assert quant_on_load(merging) is None  # the merge needs the float weights first
    dynamic = dataclasses.replace(merging, lora=LoraConfig((("x.safetensors", 1.0),), mode="dynamic"))
    assert quant_on_load(dynamic) == "w8a8-int8"


def test_all_transforms_equal_one_by_one(tiny_official_dir, lora_file):
    """LoRA merge + int8 + reference attention + compile through from_pretrained, against a float
    pipeline to which the same steps are applied by hand in the documented order."""
    together = LightX2V.from_pretrained(
        tiny_official_dir, device="cpu", dtype=torch.float32, quant="w8a8-int8", attention="reference",
        lora=[(lora_file, 0.8)], compile=CompileConfig(enabled=True, backend="aot_eager"), progress=False)
    log = together.pipeline.engine_log
    steps = [line.split(":")[0] for line in log]
    assert steps == sorted(steps, key=ORDER.index) and {"lora_merge", "quant", "attention", "compile"} <= set(steps)

    by_hand = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    from lightx2v.loading.lora import load_lora, merge_loras_
    from lightx2v.ops.attention import get_backend, set_attention_backend

    dit = by_hand.pipeline.dit
    merge_loras_(dit, [(load_lora(lora_file, dit), 0.8)])
    apply_quant(dit, "w8a8-int8", compute_dtype=torch.float32)
    set_attention_backend(dit, get_backend("reference"))
    for block in dit.blocks:
        block.compile(backend="aot_eager")

    dit_t = together.pipeline.dit
    assert all(b._compiled_call_impl is not None for b in dit_t.blocks)
    for (k, a), (k2, b) in zip(dit_t.state_dict().items(), dit.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k  # same merged-then-quantized bytes
    torch.testing.assert_close(_gen(together), _gen(by_hand), rtol=0, atol=0)


def test_quantized_at_load_equals_quantized_after(tiny_official_dir):
    at_load = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, quant="w8a8-fp8",
                                       progress=False)
    assert any("at load" in line for line in at_load.pipeline.engine_log)
    after = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    apply_quant(after.pipeline.dit, "w8a8-fp8", compute_dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in at_load.pipeline.dit.modules()) == 2 * 10  # q k v o twice, ffn.0, ffn.2
    torch.testing.assert_close(_gen(at_load), _gen(after), rtol=0, atol=0)


def test_dynamic_lora_after_quant_keeps_its_hooks(tiny_official_dir, lora_file):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, quant="w8a8-int8",
                                    lora=[(lora_file, 1.0)], lora_mode="dynamic", progress=False)
    with_lora = _gen(pipe)
    pipe.set_lora([])
    base = _gen(pipe)
    assert (with_lora - base).abs().max() > 1e-3  # the hooks are on the quantized layers and act
    pipe.set_lora([(lora_file, 1.0)])
    torch.testing.assert_close(_gen(pipe), with_lora, rtol=0, atol=0)


def test_models_declare_what_the_engine_reads():
    with torch.device("meta"):
        model = WanModel(tiny_dit_config())
    assert model._repeated_blocks == ("blocks",)
    assert isinstance(WanModel._repeated_blocks, tuple)
    apply_quant(model, "w8a8-int8", compute_dtype=torch.bfloat16)
    names = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert names and all(n.startswith("blocks.") for n in names)
    assert "head.head" not in names and "text_embedding.0" not in names


def test_quant_that_matches_nothing_is_an_error():
    with pytest.raises(InputError, match="matched no linear layer of WanModel"):
        apply_quant(randomize_(WanModel(tiny_dit_config())), "w8a8-int8", targets=r"nothing\..*")
    with pytest.raises(InputError, match="Sequential declares no quantizable linears"):
        apply_quant(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a8-int8")
    with pytest.raises(InputError, match="declares no repeated blocks"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)), CompileConfig(enabled=True))


def test_inductor_regional_compile_matches_eager(tiny_official_dir):
    """The default compile (inductor) of each block gives the eager result (CPU here; GPU in benchmarks/)."""
    pytest.importorskip("torch._inductor")
    eager = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    compiled = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, compile=True,
                                        progress=False)
    torch.testing.assert_close(_gen(compiled), _gen(eager), rtol=1e-4, atol=1e-4)


def test_compiled_blocks_do_not_recompile_across_steps_and_generations(tiny_official_dir):
    """One graph for every block, step and generation of one size (CFG on or off): dynamo's counters."""
    from torch._dynamo.utils import counters

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False,
                                    compile=CompileConfig(enabled=True, backend="aot_eager"))
    kw = dict(prompt="a fox", height=32, width=48, num_frames=5, num_inference_steps=3, seed=1, output_type="latent")
    counters.clear()
    pipe.generate(**kw)
    assert counters["stats"]["unique_graphs"] == 1
    pipe.generate(**kw)
    pipe.generate(**dict(kw, seed=2, guidance_scale=1.0))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]


def test_attention_per_role(tiny_official_dir):
    """self- and cross-attention take their own backends; the log and the modules say which."""
    from lightx2v.models.wan.dit_blocks import CrossAttention, SelfAttention

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32,
                                    attention="self=reference,cross=torch_sdpa", progress=False)
    dit = pipe.pipeline.dit
    assert {m.attn_backend.name for m in dit.modules() if isinstance(m, SelfAttention)} == {"reference"}
    assert {m.attn_backend.name for m in dit.modules() if isinstance(m, CrossAttention)} == {"torch_sdpa"}
    assert "attention: dit: self reference, cross torch_sdpa" in pipe.pipeline.engine_log
    uniform = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32,
                                       attention={"self": "reference", "cross": "reference"}, progress=False)
    assert uniform.engine.attention == "reference"  # one name for both roles is kept as one name
    torch.testing.assert_close(_gen(pipe), _gen(uniform), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ("self=reference,crosss=reference", "roles are self and cross"),
    ("self=", "expected NAME or self=NAME,cross=NAME"),
    ({"self": "nope"}, "unknown attention backend 'nope'"),
])
def test_attention_roles_refused_with_one_line(bad, message):
    from lightx2v.api import make_engine

    with pytest.raises(InputError if "nope" not in str(bad) else Exception, match=message):
        make_engine(device="cpu", attention=bad)
