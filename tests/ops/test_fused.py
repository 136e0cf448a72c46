"""The fused elementwise ops (lightx2v.ops.fused): the Triton kernels against the torch reference.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
on CPU tensors, so the shapes stay tiny: C 64..256, an odd L (37), B 2, per-sample ([B, 1, C]),
per-token ([B, L, C]) and batch-broadcast ([1, 1, C]) modulation. bf16 outputs must be within one
bf16 ulp of the reference (both round an fp32 value that differs only by fp32 rounding) and
almost all equal; fp32 outputs within 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch

from lightx2v.config import EngineConfig
from lightx2v.errors import InputError, LightX2VError
from lightx2v.models.wan.dit_blocks import rope_freqs
from lightx2v.ops.fused import get_fused, list_fused, resolve_fused

pytest.importorskip("triton")

REF, TRI = get_fused("torch"), get_fused("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, L = 2, 37


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _within_ulp(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal, or one ulp of `ref`'s dtype apart (bf16: 7 stored mantissa bits; fp16: 10)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    bits = {torch.bfloat16: 7, torch.float16: 10}[ref.dtype]
    o, r = out.float(), ref.float()
    ulp = torch.ldexp(torch.ones_like(r), torch.frexp(r).exponent - 1 - bits)  # ulp of |r| in that dtype
    bad = (o - r).abs() > ulp.clamp_min(2.0**-133)
    assert not bad.any(), f"{int(bad.sum())} elements more than 1 ulp apart, max abs diff {(o - r).abs().max():.3e}"
    # both round (to nearest even) fp32 values that differ by fp32 rounding only: nearly all agree
    assert (o == r).float().mean() >= 0.99


def _close32(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


def _mod(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return (0.3 * torch.randn(shape, generator=_g(seed))).to(DEV)


MODS = {"sample": (B, 1), "token": (B, L), "batch": (1, 1)}


@pytest.mark.parametrize("c,mod,out_dtype", [(64, "sample", torch.bfloat16), (192, "token", torch.bfloat16),
                                             (128, "batch", torch.float32)])
def test_norm_modulate_matches_reference(c, mod, out_dtype):
    x = (2.0 * torch.randn(B, L, c, generator=_g(0)) + 0.5).to(DEV)
    shift, scale = _mod((*MODS[mod], c), 1), _mod((*MODS[mod], c), 2)
    out = TRI.norm_modulate(x, shift, scale, 1e-6, out_dtype)
    ref = REF.norm_modulate(x, shift, scale, 1e-6, out_dtype)
    (_close32 if out_dtype == torch.float32 else _within_ulp)(out, ref)


def test_norm_modulate_reads_strided_modulation():
    # the block's shift/scale are unbind(2) views of e [B, 1, 6, C]: channel stride 1, others not
    c = 128
    x = torch.randn(B, L, c, generator=_g(3)).to(DEV)
    e = _mod((B, 1, 6, c), 4)
    shift, scale = e.unbind(2)[:2]
    _within_ulp(TRI.norm_modulate(x, shift, scale, 1e-6, torch.bfloat16),
                REF.norm_modulate(x, shift, scale, 1e-6, torch.bfloat16))


@pytest.mark.parametrize("c,heads,in_dtype", [(64, 2, torch.bfloat16), (192, 3, torch.float32), (256, 4, torch.bfloat16)])
def test_qk_norm_rope_matches_reference(c, heads, in_dtype):
    rope = rope_freqs((1, 1, L), c // heads, torch.device(DEV))  # [L, 1, D/2, 2]
    x = (3.0 * torch.randn(B, L, c, generator=_g(5))).to(DEV, in_dtype)
    w = (1.0 + 0.2 * torch.randn(c, generator=_g(6))).to(DEV)
    for out_dtype in (torch.bfloat16, torch.float32):
        out = TRI.qk_norm_rope(x, w, 1e-6, rope, heads, out_dtype)
        ref = REF.qk_norm_rope(x, w, 1e-6, rope, heads, out_dtype)
        assert out.shape == (B, L, heads, c // heads)
        (_close32 if out_dtype == torch.float32 else _within_ulp)(out, ref)


def test_qk_norm_rope_reads_a_slice_of_a_fused_qkv_output():
    c, heads = 128, 2
    qkv = torch.randn(B, L, 3 * c, generator=_g(7)).to(DEV, torch.bfloat16)
    q, k, _ = qkv.chunk(3, dim=-1)  # row stride 3C
    rope = rope_freqs((1, 1, L), c // heads, torch.device(DEV))
    w = (1.0 + 0.2 * torch.randn(c, generator=_g(8))).to(DEV)
    for t in (q, k):
        _within_ulp(TRI.qk_norm_rope(t, w, 1e-6, rope, heads, torch.bfloat16),
                    REF.qk_norm_rope(t, w, 1e-6, rope, heads, torch.bfloat16))


@pytest.mark.parametrize("mod", ["sample", "token"])
def test_gated_residual_matches_reference(mod):
    c = 192
    x = torch.randn(B, L, c, generator=_g(9)).to(DEV)
    y = torch.randn(B, L, c, generator=_g(10)).to(DEV, torch.bfloat16)
    gate = _mod((*MODS[mod], c), 11)
    out = TRI.gated_residual(x, y, gate)
    _close32(out, REF.gated_residual(x, y, gate), rtol=1e-6)
    assert out.data_ptr() != x.data_ptr()  # a new tensor: x is not written


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_matches_reference(dtype):
    import torch.nn.functional as F

    lin = torch.nn.Linear(64, 96).to(DEV, dtype)
    x = torch.randn(B, L, 64, generator=_g(20)).to(DEV, dtype)
    ref = REF.linear_gelu(lin, x)
    assert torch.equal(ref, F.gelu(lin(x), approximate="tanh"))  # the FFN's Linear + GELU(tanh), unchanged
    out = TRI.linear_gelu(lin, x)
    assert out.shape == ref.shape and out.dtype == dtype
    if x.is_cuda and dtype == torch.bfloat16:  # cuBLASLt's epilogue: GELU before the one rounding
        assert (out.float() - ref.float()).abs().max() <= 2e-2 * ref.float().abs().max()
        assert not torch.equal(out, ref)  # the epilogue did run
    else:
        assert torch.equal(out, ref)  # the reference everywhere else
    # a hooked layer (a dynamic LoRA is a forward hook) always runs through the module
    lin.register_forward_hook(lambda module, inputs, output: output * 2)
    assert torch.equal(TRI.linear_gelu(lin, x), F.gelu(lin(x), approximate="tanh"))


def test_triton_ops_defer_to_the_reference_inside_compile():
    """Eagerly the Triton kernels run; while torch.compile traces, the three elementwise ops are the
    torch reference (Inductor fuses it), so a compiled block equals the compiled reference exactly."""
    c, heads = 64, 2
    x = torch.randn(B, L, c).to(DEV)
    shift, scale, gate = _mod((B, 1, c), 1), _mod((B, 1, c), 2), _mod((B, 1, c), 3)
    rope = rope_freqs((1, 1, L), c // heads, torch.device(DEV))
    w = torch.ones(c, device=DEV)

    def f(ops, x):
        h = ops.norm_modulate(x, shift, scale, 1e-6, torch.bfloat16)
        q = ops.qk_norm_rope(h, w, 1e-6, rope, heads, torch.bfloat16)
        return ops.gated_residual(x, q.flatten(2), gate)

    graphs = []

    def record(gm, example_inputs):  # a dynamo backend that keeps the traced graph and runs it as is
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    # fullgraph: a graph break is an error
    compiled = torch.compile(lambda x: f(TRI, x), backend=record, fullgraph=True)
    ref_compiled = torch.compile(lambda x: f(REF, x), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), ref_compiled(x))
    (graph,) = graphs
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert targets and not any("lightx2v" in t for t in targets), targets  # no kernel inside the compiled graph
    eager = f(TRI, x)  # the kernels: equal to the reference within their rounding, not bit for bit
    _close32(eager, f(REF, x), rtol=2e-2)


# ---------------------------------------------------------------- dispatch


def test_registry_and_choices_agree():
    from lightx2v import choices

    assert tuple(list_fused()) == choices.KERNELS


def test_resolve_refuses_what_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(LightX2VError, match=r"kernels 'triton' cannot run on cpu .*needs a CUDA device.*usable here: auto, torch"):
        resolve_fused("triton", "cpu", torch.bfloat16)
    with pytest.raises(LightX2VError, match=r"unknown kernels 'cutlass'; known: auto, torch, triton"):
        resolve_fused("cutlass", "cpu", torch.bfloat16)
    assert resolve_fused("auto", "cpu", torch.bfloat16).name == "torch"
    assert resolve_fused("torch", "cpu", torch.bfloat16) is REF


def test_auto_never_picks_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the capability check reads it (kernels are not run here)
    assert resolve_fused("triton", "cpu", torch.float32) is TRI
    assert resolve_fused("auto", "cpu", torch.float32) is REF


def test_engine_config_validates_kernels():
    assert EngineConfig(device="cpu").kernels == "torch"
    with pytest.raises(InputError, match="kernels must be 'torch', 'triton' or 'auto'"):
        EngineConfig(device="cpu", kernels="fast")


# ---------------------------------------------------------------- a whole DiT


def _tiny_dit(dtype: torch.dtype):
    from lightx2v.models.wan.dit import WanModel
    from lightx2v.models.wan.tiny import randomize_, tiny_dit_config

    model = randomize_(WanModel(tiny_dit_config()), seed=4).eval()
    if dtype != torch.float32:
        for m in model.blocks.modules():  # bf16 linears, fp32 norms / modulation (as loaded)
            if isinstance(m, torch.nn.Linear):
                m.to(dtype)
    return model


@pytest.mark.parametrize("per_token,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_tiny_dit_triton_equals_torch(per_token, dtype):
    from lightx2v.ops.fused import set_fused_backend

    model = _tiny_dit(dtype).to(DEV)  # on a GPU machine the kernels compile for real
    g = _g(12)
    x = torch.randn(2, 16, 3, 4, 6, generator=g).to(DEV)  # grid (3, 2, 3): L = 18
    t = (torch.rand(2, 18, generator=g) * 1000 if per_token else torch.tensor([999.0, 437.5])).to(DEV)
    context = torch.randn(2, 7, 32, generator=g).to(DEV)
    with torch.no_grad():
        ref = model(x, t, context)
        assert set_fused_backend(model, TRI) == 2 * 2 + 1  # per block: self_attn, block; the head
        out = model(x, t, context)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: one-ulp differences carried through 2 blocks
    err = (out - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), err
    assert not torch.equal(out, ref) or dtype == torch.float32  # the kernels did run


def test_engine_kernels_step(tiny_official_dir):
    from lightx2v import LightX2V

    def gen(pipe):
        lat = torch.randn(pipe.pipeline.geometry.latent_shape(5, 32, 32), generator=_g(3))
        return pipe.generate(prompt="a fox", height=32, width=32, num_frames=5, num_inference_steps=2,
                             guidance_scale=3.0, latents=lat, output_type="latent").latents

    tri = LightX2V.from_pretrained(tiny_official_dir, device=DEV, dtype=torch.float32, kernels="triton", progress=False)
    assert "kernels: dit: triton" in tri.pipeline.engine_log
    assert all(m.fused_ops is TRI for m in tri.pipeline.dit.modules() if hasattr(m, "fused_ops"))
    ref = LightX2V.from_pretrained(tiny_official_dir, device=DEV, dtype=torch.float32, progress=False)
    assert "kernels: dit: torch" in ref.pipeline.engine_log
    a, b = gen(tri), gen(ref)
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
