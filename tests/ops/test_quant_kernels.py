"""The Triton kernels of the 8-bit linears (lightx2v/ops/triton/quant.py) against float64 computations
written here, and QuantLinear with kernels="triton" against its torch reference.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
Two interpreter limits shape the CPU cases: its fp32 -> e4m3 cast is not the hardware's (it
truncates, and sends about 2% of values just below a power of two, e.g. 124.7, to the power below,
64), so the fp8 values are checked strictly only on a GPU (the scales everywhere); and its bf16 `tl.dot`
is wrong, so the weight-only GEMM is checked with fp16 activations on the CPU (bf16 on a GPU).
"""

from __future__ import annotations

import pytest
import torch

tq = pytest.importorskip("lightx2v.ops.triton.quant")  # needs triton (the test extras have it)

from lightx2v.ops.fused import get_fused, set_fused_backend  # noqa: E402
from lightx2v.quant import QuantLinear, get_scheme  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ACT = torch.bfloat16 if DEV.type == "cuda" else torch.float16  # see the module docstring


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("m,k", [(1, 128), (37, 300), (5, 2100)])  # one row; a tail; more than one 2048 block
def test_quantize_rows_int8_matches_an_independent_absmax_round(m, k):
    x = (torch.randn(m, k, generator=_gen()) * 3).to(ACT)
    x[0, 7] = 40.0  # an outlier sets row 0's scale
    q, s = tq.quantize_rows(x.to(DEV), torch.int8)
    xd = x.double()
    scale = xd.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    expected = torch.round(xd / scale).clamp(-127, 127)  # half to even, as the kernel rounds
    assert q.dtype == torch.int8 and s.shape == (m, 1)
    torch.testing.assert_close(s.double().cpu(), scale, rtol=1e-6, atol=0)
    # a value within fp32 rounding of a .5 tie may land on either side; nothing else differs
    assert (q.cpu().double() - expected).abs().max() <= 1
    assert (q.cpu().double() != expected).float().mean() < 1e-3


def test_quantize_rows_fp8_within_one_e4m3_step():
    x = (torch.randn(33, 256, generator=_gen(1)) * 2).to(ACT)
    q, s = tq.quantize_rows(x.to(DEV), torch.float8_e4m3fn)
    xd = x.double()
    scale = xd.abs().amax(1, keepdim=True) / 448
    torch.testing.assert_close(s.double().cpu(), scale, rtol=1e-6, atol=0)
    v = xd / scale
    got = q.cpu().double()
    step = torch.exp2(torch.floor(torch.log2(v.abs().clamp(min=2 ** -6))) - 3)  # e4m3: 3 mantissa bits
    within = ((got - v).abs() <= step + 1e-12).float().mean().item()
    assert within == 1.0 if DEV.type == "cuda" else within > 0.95, within
    assert got.abs().max() == 448  # each row's absmax lands exactly on the top of the range


def test_zero_row_gets_a_finite_scale():
    x = torch.zeros(3, 128, dtype=ACT)
    q, s = tq.quantize_rows(x.to(DEV), torch.int8)
    assert torch.isfinite(s).all() and (q == 0).all()


@pytest.mark.parametrize("m,n,bias", [(37, 48, True), (16, 32, False), (1, 80, True)])
def test_int8_gemm_epilogue_matches_float64(m, n, bias):
    g = _gen(2)
    a = torch.randint(-127, 128, (m, 256), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, 256), generator=g, dtype=torch.int8)
    a_s, b_s = torch.rand(m, 1, generator=g) + 0.5, torch.rand(n, 1, generator=g) + 0.5
    bb = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    y = tq.scaled_mm(a.to(DEV), b.to(DEV), a_s.to(DEV), b_s.to(DEV), None if bb is None else bb.to(DEV), torch.float32)
    ref = (a.double() @ b.double().T) * a_s.double() * b_s.double().T
    if bias:
        ref = ref + bb.double()
    assert y.shape == (m, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("wdtype", [torch.int8, torch.float8_e4m3fn])
def test_weight_only_gemm_converts_the_weight_in_registers(wdtype):
    g = _gen(3)
    x = torch.randn(29, 384, generator=g).to(ACT)
    w = (torch.randn(64, 384, generator=g) * 60).clamp(-127, 127)
    w = torch.round(w).to(wdtype) if wdtype == torch.int8 else w.to(wdtype)
    ws = torch.rand(64, 1, generator=g) * 0.01
    bias = torch.randn(64, generator=g).to(ACT)
    y = tq.scaled_mm(x.to(DEV), w.to(DEV), None, ws.to(DEV), bias.to(DEV), ACT)
    ref = (x.double() @ w.double().T) * ws.double().T + bias.double()
    assert y.dtype == ACT
    assert ((y.cpu().double() - ref).norm() / ref.norm()) < 4e-3  # one rounding of the output to 16 bits


def test_scaled_mm_refuses_what_it_cannot_compute():
    a = torch.zeros(4, 100, dtype=torch.int8)
    with pytest.raises(ValueError, match="multiple of 128"):
        tq.scaled_mm(a, a, torch.ones(4, 1), torch.ones(4), None, torch.float32)
    a = torch.zeros(4, 128, dtype=torch.int8)
    with pytest.raises(ValueError, match="int8 activations need int8 weights"):
        tq.scaled_mm(a, a.float().to(torch.float8_e4m3fn), torch.ones(4, 1), torch.ones(4), None, torch.float32)


# fp8: the interpreter's e4m3 cast is not the hardware's (module docstring), so on a GPU only
@pytest.mark.parametrize("scheme", ["w8a8-int8"] + (["w8a8-fp8"] if DEV.type == "cuda" else []))
def test_quant_linear_triton_matches_its_torch_reference(scheme):
    g = _gen(4)
    lin = torch.nn.Linear(256, 96).to(ACT)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 256, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(96, generator=g))
    q = QuantLinear.from_linear(lin, get_scheme(scheme)).to(DEV)
    x = torch.randn(2, 19, 256, generator=g).to(ACT).to(DEV)
    ref = q(x)
    q.kernels = "triton"
    y = q(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert not torch.equal(y, ref) or DEV.type == "cuda"  # other kernels ran (their sums differ in order)
    rel = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel < 5e-3, rel  # the same integers and scales; only the order of the float sums differs


def test_set_fused_backend_puts_the_kernels_on_quantized_linears():
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 128))
    from lightx2v.quant import apply_quant

    apply_quant(model, "w8a8-int8", targets=["0"])
    set_fused_backend(model, get_fused("triton"))
    assert model[0].kernels == "triton" and not hasattr(model[1], "kernels")
    set_fused_backend(model, get_fused("torch"))
    assert model[0].kernels == "torch"


def test_unaligned_layer_falls_back_to_the_reference():
    lin = torch.nn.Linear(64, 32)  # K = 64: not a multiple of the GEMM's K tile
    q = QuantLinear.from_linear(lin, get_scheme("w8a8-int8"))
    x = torch.randn(5, 64)
    ref = q(x)
    q.kernels = "triton"
    torch.testing.assert_close(q(x), ref, rtol=0, atol=0)


def test_custom_ops_trace_without_graph_breaks():
    lin = torch.nn.Linear(128, 64).to(ACT)
    q = QuantLinear.from_linear(lin, get_scheme("w8a8-int8")).to(DEV)
    q.kernels = "triton"
    x = torch.randn(7, 128).to(ACT).to(DEV)
    ref = q(x)
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    torch.testing.assert_close(compiled(x), ref, rtol=0, atol=0)
