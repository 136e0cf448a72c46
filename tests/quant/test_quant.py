"""Quantization schemes, QuantLinear and the apply_quant transform (reference dequantizing path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.errors import LightX2VError
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QUANT_SCHEMES, QuantLinear, apply_quant, get_scheme


def _weight(out: int = 48, inp: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out, inp, generator=g) * torch.linspace(0.01, 3.0, out)[:, None]  # rows of very different ranges
    w[3] = 0.0  # an all-zero row must get a finite scale
    return w


def _dit_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 6, 32, generator=g))


@pytest.mark.parametrize("name, qdtype, qmax", [("w8a8-int8", torch.int8, 127.0),
                                                ("w8a8-fp8", torch.float8_e4m3fn, 448.0)])
def test_per_channel_quantize_roundtrip(name, qdtype, qmax):
    scheme = get_scheme(name)
    w = _weight()
    q, s = scheme.quantize(w)
    assert q.dtype == qdtype and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (w.shape[0], 1)
    absmax = w.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(s, absmax.clamp(min=1e-5) / qmax)
    assert torch.all(q[3].float() == 0)
    # the largest entry of each row maps to +-qmax exactly
    assert torch.all(q.float().abs().amax(dim=1) == torch.where(absmax[:, 0] > 0, qmax, 0.0))
    err = (scheme.dequantize(q, s) - w).abs()
    if qdtype == torch.int8:
        assert torch.all(err <= s / 2 + 1e-7)  # rounding to the nearest step
    else:
        assert torch.all(err <= w.abs() * 2**-4 + s * 2**-9 + 1e-7)  # e4m3: 3 mantissa bits (+ subnormals)


def test_per_tensor_fp8_scale_is_a_scalar():
    scheme = get_scheme("fp8-scaled")
    w = _weight()
    q, s = scheme.quantize(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == ()
    torch.testing.assert_close(s, w.abs().max() / 448.0)
    assert scheme.dequantize(q, s).sub(w).abs().max() <= w.abs().max() * 2**-4


def test_unknown_scheme_is_one_clear_error():
    with pytest.raises(LightX2VError, match=r"unknown quantization scheme 'int4'; expected one of w8a8-int8, w8a8-fp8, fp8-scaled"):
        get_scheme("int4")
    assert set(QUANT_SCHEMES) == {"w8a8-int8", "w8a8-fp8", "fp8-scaled", "w8a16-int8", "w8a16-fp8",
                                  "w4a4-nvfp4", "w4a16-nvfp4"}


WEIGHT_ONLY = ("fp8-scaled", "w8a16-fp8", "w8a16-int8")
W8A8 = ("w8a8-fp8", "w8a8-int8")


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_quant_linear_computes_with_the_dequantized_weight(name):
    torch.manual_seed(0)
    lin = nn.Linear(40, 48)
    lin.weight.data = _weight()
    q = QuantLinear.from_linear(lin, get_scheme(name))
    assert list(q.state_dict()) == ["weight", "weight_scale", "bias"]  # LightX2V's names
    assert q.compute_dtype == torch.float32 and q.weight.dtype == get_scheme(name).qdtype
    x = torch.randn(2, 5, 40)
    w = q.dequantize_weight()
    assert torch.equal(q(x), F.linear(x, w, lin.bias))
    assert (q(x) - lin(x)).abs().max() <= 0.1 * lin(x).abs().max()


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_quant_linear_bf16_compute(name):
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(40, 48)
    with torch.no_grad():
        lin.weight.copy_(_weight())
        lin.bias.copy_(torch.randn(48, generator=g))
    q = QuantLinear.from_linear(lin, get_scheme(name), compute_dtype=torch.bfloat16)
    assert q.bias.dtype == torch.bfloat16 and q.weight_scale.dtype == torch.float32
    x = torch.randn(3, 40, generator=g)
    out = q(x)  # fp32 input is cast to the compute dtype
    assert out.dtype == torch.bfloat16 and out.shape == (3, 48)
    # independent fp32 reference from the stored bytes: y = x @ (w_q * scale)^T + b
    w = q.weight.float() * q.weight_scale.float().reshape(-1, 1)  # per-row scale ([out, 1]) or scalar ([])
    want = x @ w.T + lin.bias.detach()
    # bf16 rounds x, the dequantized weight, the bias and the result, each by <= 2^-8 relative
    # (fp32 accumulation): |err| <= 4 * 2^-8 * (|x| @ |w|^T + |b|) elementwise
    bound = 4 * 2**-8 * (x.abs() @ w.abs().T + lin.bias.detach().abs())
    err = (out.float() - want).abs()
    assert torch.all(err <= bound), (err / bound).max()
    # and on the whole: nearest rounding errors are ~u/sqrt(3) RMS each and do not add up
    # coherently, so the relative L2 error stays under 2u; a scale 1% off (or one row's scale
    # wrong, or no scale) would exceed it
    assert err.norm() <= 2**-7 * want.norm()


# nvfp4 (blocks of 16 input features, so not this 40-wide layer): tests/quant/test_nvfp4.py
@pytest.mark.parametrize("name", sorted(n for n in QUANT_SCHEMES if "nvfp4" not in n))
def test_set_weight_requantizes_for_lora_merging(name):
    lin = nn.Linear(40, 48)
    lin.weight.data = _weight()
    q = QuantLinear.from_linear(lin, get_scheme(name))
    storage = q.weight.data_ptr()
    delta = 0.05 * torch.randn(48, 8) @ torch.randn(8, 40)  # a low-rank LoRA update
    merged = q.dequantize_weight() + delta
    q.set_weight(merged)
    assert q.weight.data_ptr() == storage  # in place: offload buffers and pins stay valid
    tol = 0.5 * merged.abs().amax() / (127 if name == "w8a8-int8" else 8)
    assert (q.dequantize_weight() - merged).abs().max() <= tol
    assert (q.dequantize_weight() - lin.weight).abs().max() > 1e-3  # the update did land
    with pytest.raises(ValueError, match="shape"):
        q.set_weight(torch.zeros(40, 48))


def _dit():
    return randomize_(WanModel(tiny_dit_config()), seed=3).eval()


def test_apply_quant_on_a_loaded_dit_quantizes_the_block_linears():
    ref = _dit()
    model = apply_quant(_dit(), "w8a8-int8")
    names = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    per_block = ["cross_attn.k", "cross_attn.o", "cross_attn.q", "cross_attn.v", "ffn.0", "ffn.2",
                 "self_attn.k", "self_attn.o", "self_attn.q", "self_attn.v"]
    assert names == [f"blocks.{i}.{p}" for i in range(2) for p in per_block]
    assert isinstance(model.text_embedding[0], nn.Linear) and isinstance(model.head.head, nn.Linear)
    sd = model.state_dict()
    assert sd["blocks.1.ffn.0.weight"].dtype == torch.int8 and sd["blocks.1.ffn.0.weight_scale"].shape == (128, 1)
    x, t, c = _dit_inputs()
    with torch.no_grad():
        out, want = model(x, t, c), ref(x, t, c)
    err = (out - want).abs().max()
    assert 0 < err <= 0.05 * want.abs().max()


def test_apply_quant_on_meta_then_skip():
    with torch.device("meta"):
        model = WanModel(tiny_dit_config())
    apply_quant(model, "w8a8-fp8", compute_dtype=torch.bfloat16, skip=("ffn",))
    q = model.blocks[0].self_attn.q
    assert isinstance(q, QuantLinear) and q.weight.is_meta
    assert (q.weight.dtype, q.weight_scale.dtype, q.bias.dtype) == (torch.float8_e4m3fn, torch.float32, torch.bfloat16)
    assert isinstance(model.blocks[0].ffn[0], nn.Linear)


def test_apply_quant_keeps_fp32_modules_in_fp32():
    with torch.device("meta"):
        model = WanModel(tiny_dit_config())
    apply_quant(model, "fp8-scaled", targets=["time_embedding.0", "blocks.0.self_attn.q"], compute_dtype=torch.bfloat16)
    assert model.time_embedding[0].compute_dtype == torch.float32  # WanModel._keep_in_fp32
    assert model.blocks[0].self_attn.q.compute_dtype == torch.bfloat16
    assert model.blocks[0].self_attn.q.weight_scale.shape == ()


def _emulate_w8a8(x, qweight, w_scale, bias, fp8: bool):
    """Independent float64 emulation of a w8a8 linear: x quantized per row, exact products, scales after."""
    xd = x.double().reshape(-1, x.shape[-1])
    qmax = 448.0 if fp8 else 127.0
    xs = xd.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
    xq = (xd / xs).clamp(-qmax, qmax)
    xq = xq.float().to(torch.float8_e4m3fn).double() if fp8 else torch.round(xq)
    y = (xq @ qweight.double().T) * xs * w_scale.double().reshape(1, -1)
    return (y + (0 if bias is None else bias.double())).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("name", W8A8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 37])  # fewer than, and not a multiple of, the 16-row alignment
def test_w8a8_quantizes_activations_per_token(name, dtype, rows):
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) / 8)
        lin.bias.copy_(torch.randn(48, generator=g))
    q = QuantLinear.from_linear(lin, get_scheme(name), compute_dtype=dtype)
    x = torch.randn(rows, 64, generator=g) * torch.logspace(-2, 1, rows).reshape(-1, 1)  # rows of very different size
    out = q(x)
    assert out.dtype == dtype and out.shape == (rows, 48)
    want = _emulate_w8a8(x.to(dtype), q.weight.float(), q.weight_scale, q.bias.float(), fp8=name.endswith("fp8"))
    err = (out.double() - want).norm() / want.norm()
    assert err <= (1e-6 if dtype == torch.float32 else 1e-2), err  # fp32: the same numbers; bf16: the output rounding
    # and it is not the weight-only path: the activation quantization shows against the dequantized GEMM
    weight_only = F.linear(x.to(dtype).float(), q.dequantize_weight(), q.bias.float())
    assert not torch.allclose(out.float(), weight_only, rtol=0, atol=0)
    assert (out.float() - lin(x).detach()).norm() <= 0.1 * lin(x).detach().norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w8a8_fp8_on_a_cpu_whose_scaled_mm_lacks_row_wise_scales(monkeypatch, dtype):
    """torch 2.11's CPU _scaled_mm takes per-tensor scales only: the same product is then computed in fp32."""
    from lightx2v.quant import gemm

    assert gemm._cpu_rowwise_scaled_mm() in (True, False)  # this torch's answer (2.13: True)
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) / 8)
    q = QuantLinear.from_linear(lin, get_scheme("w8a8-fp8"), compute_dtype=dtype)
    x = torch.randn(2, 37, 64, generator=g)
    monkeypatch.setattr(gemm, "_CPU_ROWWISE", False)
    monkeypatch.setattr(torch, "_scaled_mm", None)  # never reached
    out = q(x)
    assert out.dtype == dtype and out.shape == (2, 37, 48)
    want = _emulate_w8a8(x.to(dtype), q.weight.float(), q.weight_scale, q.bias.float(), fp8=True)
    assert (out.double() - want).norm() / want.norm() <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_w8a8_leading_dims_and_no_bias():
    lin = nn.Linear(32, 16, bias=False)
    q = QuantLinear.from_linear(lin, get_scheme("w8a8-int8"))
    x = torch.randn(2, 3, 7, 32)
    out = q(x)
    assert out.shape == (2, 3, 7, 16)
    torch.testing.assert_close(out, q(x.reshape(-1, 32)).reshape(2, 3, 7, 16), rtol=0, atol=0)


def test_w8a8_fp8_refused_where_fp8_gemms_cannot_run(monkeypatch):
    from lightx2v.quant import gemm

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    reason = gemm.fp8_gemm_available(torch.device("cuda"))
    assert "sm89+" in reason and "sm80" in reason and "w8a16-fp8" in reason
    assert get_scheme("w8a8-fp8").available(torch.device("cpu")) is None
    assert get_scheme("w8a16-fp8").available(torch.device("cuda")) is None
