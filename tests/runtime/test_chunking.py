"""Token chunking (lightx2v.runtime.chunking, WanBlock._forward_chunked): the same outputs as the
whole-sequence block, with every transform users combine it with, and much less live memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightx2v.config import EngineConfig
from lightx2v.errors import InputError
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import apply_quant
from lightx2v.runtime.block_offload import apply_block_offload
from lightx2v.runtime.chunking import apply_chunking
from tests.live_memory import LiveMemory


class _Pipe:
    def __init__(self, **dits):
        self.components = dict(dits)
        self.transformer_names = tuple(dits)


def _model(seed=0, layers=3, **cfg):
    torch.manual_seed(seed)
    return randomize_(WanModel(dataclasses.replace(tiny_dit_config(), num_layers=layers, **cfg)), seed).eval()


def _inputs(size=(2, 4, 6), seed=1, batch=1, image=False):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(batch, 16, *size, generator=g), torch.randn(batch, 7, 32, generator=g)
    extra = {}
    if image:  # i2v: 20 channels of mask + image latents, and CLIP tokens
        extra = dict(y=torch.randn(batch, 20, *size, generator=g), clip_fea=torch.randn(batch, 257, 1280, generator=g))
    return x, ctx, extra


@torch.no_grad()
def _run(model, chunk, size=(2, 4, 6), batch=1, image=False):
    apply_chunking(model, chunk)
    x, ctx, extra = _inputs(size, batch=batch, image=image)
    return model(x, torch.full((batch,), 700.0), ctx, **extra)


@pytest.mark.parametrize("chunk", [5, 16, 47])  # uneven last chunk; 48 tokens in all (2 x 2 x 3 ... x 4)
@pytest.mark.parametrize("image", [False, True])
def test_chunked_equals_whole(chunk, image):
    cfg = dict(model_type="i2v", in_dim=36) if image else {}
    model = _model(**cfg)
    whole = _run(model, 0, image=image, batch=2)
    chunked = _run(model, chunk, image=image, batch=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_per_token_modulation_block():
    """Wan2.2 TI2V gives each token its own timestep: e0 [B, L, 6, C] is cut with the tokens."""
    model = _model(layers=1)
    block = model.blocks[0]
    g = torch.Generator().manual_seed(3)
    B, L, C = 2, 40, model.cfg.dim if hasattr(model, "cfg") else 64
    x = torch.randn(B, L, C, generator=g)
    e = torch.randn(B, L, 6, C, generator=g) * 0.1
    rope = model.rope((2, 4, 5), x.device)
    kv = block.cross_attn.context_kv(torch.randn(B, 7, C, generator=g))
    with torch.no_grad():
        block.chunk_tokens = 0
        ref = block(x, e, kv, rope)
        block.chunk_tokens = 9
        out = block(x, e, kv, rope)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(x, out)  # the input is left as it was (a cache reads it after the block)


def test_input_is_not_written():
    model = _model(layers=1)
    block = model.blocks[0]
    x = torch.randn(1, 48, 64)
    before = x.clone()
    e = torch.randn(1, 1, 6, 64) * 0.1
    with torch.no_grad():
        block.chunk_tokens = 7
        block(x, e, block.cross_attn.context_kv(torch.randn(1, 7, 64)), model.rope((2, 4, 6), x.device))
    assert torch.equal(x, before)


def test_grad_mode_runs_the_whole_block():
    """The in-place residual is for inference: with autograd on, the block runs whole."""
    model = _model(layers=1)
    apply_chunking(model, 5)
    x, ctx, _ = _inputs()
    model.requires_grad_(True)
    out = model(x, torch.full((1,), 700.0), ctx)
    out.sum().backward()
    assert model.blocks[0].ffn[0].weight.grad is not None


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a16-fp8"])
def test_with_quantization(scheme):
    model = _model()
    apply_quant(model, scheme)
    torch.testing.assert_close(_run(model, 11), _run(model, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_with_block_and_phase_offload(granularity):
    """The chunked path calls the blocks' submodules in phase order: phase offload's hooks see every phase."""
    model = _model(layers=4)
    ref = _run(model, 0)
    apply_block_offload(_Pipe(dit=model), torch.device("cpu"), granularity, 2)
    torch.testing.assert_close(_run(model, 13), ref, rtol=1e-5, atol=1e-5)


def test_with_fused_qkv():
    from lightx2v.runtime.fuse import fuse_qkv

    model = _model()
    ref = _run(model, 0)
    assert fuse_qkv(model)
    torch.testing.assert_close(_run(model, 10), ref, rtol=1e-5, atol=1e-5)


def _peak(block, x, e, kv, rope, chunk):
    block.chunk_tokens = chunk
    with torch.no_grad(), LiveMemory(block, x, e, rope, *kv) as live:
        block(x, e, kv, rope)
    return live.peak


def test_chunking_lowers_the_live_memory():
    """At Wan 14B proportions (ffn = 2.7 x dim) and many tokens, the chunked block keeps less than half
    of the whole block's peak: the residual, q/k/v and the attention output, not the FFN hidden state
    and the norms' fp32 temporaries of every token (lightx2v.models.wan.spec.memory's formulas)."""
    dim, ffn, heads, L, n = 128, 346, 2, 4096, 256
    model = _model(layers=1, dim=dim, ffn_dim=ffn, num_heads=heads).to(torch.bfloat16)
    block = model.blocks[0]
    for m in block.modules():  # the fp32 norms stay fp32, as the loader keeps them
        if hasattr(m, "eps") and hasattr(m, "weight") and m.weight is not None:
            m.weight.data = m.weight.data.float()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, L, dim, generator=g)
    e = torch.randn(1, 1, 6, dim, generator=g) * 0.1
    rope = model.rope((4, 32, 32), x.device)
    kv = block.cross_attn.context_kv(torch.randn(1, 7, dim, generator=g).to(torch.bfloat16))
    whole, chunked = _peak(block, x, e, kv, rope, 0), _peak(block, x, e, kv, rope, n)
    per_token = chunked / L
    # measured (bf16, the block's input not counted): whole ~24 x dim bytes a token (the spec's 30 x dim,
    # input included, fits GPU peaks), chunked ~8 (+4 for the input: the spec's (4 + 4s) x dim)
    assert whole / L > 20 * dim and chunked < 0.5 * whole, (whole, chunked)
    assert per_token < (13 + 30 * n / L) * dim, per_token  # ~12 x dim bytes a token + one chunk's temporaries


def test_engine_step_and_config():
    with pytest.raises(InputError, match="chunk_tokens must be 0"):
        EngineConfig(device="cpu", chunk_tokens=100)
    with pytest.raises(InputError, match="chunk_tokens"):
        EngineConfig(device="cpu", chunk_tokens=True)
    assert EngineConfig(device="cpu", chunk_tokens=2048).chunk_tokens == 2048
    model = _model()
    assert apply_chunking(model, 512) == 3 and all(b.chunk_tokens == 512 for b in model.blocks)


def test_api_and_cli_pass_it_on(tiny_official_dir, capsys):
    from lightx2v import LightX2V
    from lightx2v.cli.main import main

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", progress=False, chunk_tokens=256)
    assert any(line.startswith("chunking: dit, 2 blocks run 256 tokens") for line in pipe.pipeline.engine_log)
    assert pipe.pipeline.components["dit"].blocks[0].chunk_tokens == 256
    rc = main(["generate", "--model-path", str(tiny_official_dir), "--prompt", "x", "--chunk-tokens", "10",
               "--device", "cpu", "--output", "/tmp/never.mp4"])
    err = capsys.readouterr().err
    assert rc != 0 and "--chunk-tokens must be 0 (off) or an integer >= 256, got 10" in err and "Traceback" not in err


def test_in_place_saves_a_residual_copy_and_keeps_a_runners_input():
    """Called by forward itself, the chunked blocks write over their inputs (the embedding is not read
    again): one fp32 [L, C] copy less at the peak. Under a block runner (a feature cache keeps the stack's
    input) the first block does not: the input it was given is unchanged and the output the same."""
    dim, L = 256, 4096
    model = _model(layers=2, dim=dim, ffn_dim=692, num_heads=2)
    apply_chunking(model, 256)
    x, ctx, _ = _inputs(size=(4, 64, 64))
    t = torch.full((1,), 700.0)
    seen = {}

    def runner(m, xs, **kw):
        seen["before"] = xs.clone()
        out = m.run_blocks(xs, **kw)
        seen["after"] = xs
        return out

    with torch.no_grad():
        with LiveMemory(model, x, ctx) as direct:
            ref = model(x, t, ctx)
        model.block_runner = runner
        with LiveMemory(model, x, ctx) as kept:
            out = model(x, t, ctx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(seen["before"], seen["after"])  # the runner's input was not written
    assert direct.peak < kept.peak - 3 * dim * L, (direct.peak, kept.peak)  # 4 x dim bytes a token saved


def test_with_a_feature_cache(tiny_official_dir):
    """A first-block cache runs block 0, then the rest: neither writes over what the cache keeps."""
    from lightx2v import LightX2V

    def video(**kw):
        pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", progress=False,
                                        cache="firstblock:threshold=10", **kw)
        r = pipe.generate(prompt="a fox", height=256, width=256, num_frames=9, num_inference_steps=6,
                          guidance_scale=3.0, seed=1, output_type="latent")
        return r.latents, r.stats

    (ref, stats), (out, stats_chunked) = video(), video(chunk_tokens=256)
    assert stats["model_calls_skipped"] > 0 and stats == stats_chunked
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_the_kept_context_kv_is_freed_before_the_decode(tiny_official_dir, monkeypatch):
    """A small GPU decodes with what the denoise held given back: the cross-attention K/V too."""
    from lightx2v import LightX2V

    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", progress=False)
    dit, seen = pipe.pipeline.components["dit"], []
    decode = type(pipe.pipeline).decode

    def spy(self, latents, *a, **kw):
        seen.append(len(dit.context_cache._entries))
        return decode(self, latents, *a, **kw)

    monkeypatch.setattr(type(pipe.pipeline), "decode", spy)
    stored = []
    get = type(dit.context_cache).get
    monkeypatch.setattr(type(dit.context_cache), "get", lambda self, *a: stored.append(1) or get(self, *a))
    pipe.generate(prompt="a fox", height=64, width=64, num_frames=5, num_inference_steps=2, seed=0,
                  output_path=str(tiny_official_dir.parent / "kv.mp4"))
    assert seen == [0] and stored  # it was used during the denoise, empty at the decode


def test_with_compiled_blocks_and_dynamic_lora(tmp_path):
    """Compiled blocks trace the chunked path (its chunk loop unrolled for the shape); a dynamic LoRA's
    hooks on the linears run in every chunk."""
    from lightx2v.config import CompileConfig
    from lightx2v.runtime.engine import compile_blocks

    model = _model()
    ref = _run(model, 0)
    compile_blocks(model, CompileConfig(enabled=True, backend="aot_eager"))
    torch.testing.assert_close(_run(model, 16), ref, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()

    plain, chunked = _model(), _model()
    for m in (plain, chunked):  # a LoRA-like hook on every FFN input linear: adds a fixed low-rank term
        for i, block in enumerate(m.blocks):
            g = torch.Generator().manual_seed(i)
            down = torch.randn(4, 64, generator=g) * 0.01
            up = torch.randn(block.ffn[0].out_features, 4, generator=g) * 0.01
            block.ffn[0].register_forward_hook(lambda mod, args, out, d=down, u=up: out + args[0] @ d.t() @ u.t())
    torch.testing.assert_close(_run(chunked, 16), _run(plain, 0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_run(plain, 0), ref)  # the hooks change the output
