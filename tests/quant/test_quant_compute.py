"""Which compute a quantized layer runs: w8a8 (8-bit activations and GEMM) or weight-only w8a16,
chosen by the user's scheme or, for a pre-quantized file, by what the device can run."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from lightx2v.errors import InputError
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.quant.fp8 import Fp8PerChannel
from lightx2v.runtime.engine import check_quant_compute, quantize


class _Two(nn.Module):
    _quant_linears = r"(a|b)"

    def __init__(self, n_in: int = 32, n_out: int = 48) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(n_in, n_out), nn.Linear(n_out, n_in)


def _pipeline(model):
    return types.SimpleNamespace(components={"dit": model}, transformer_names=("dit",))


def test_a_weight_only_scheme_reuses_a_w8a8_file_without_requantizing():
    model = apply_quant(_Two(), "w8a8-fp8")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    log = quantize(_pipeline(model), "w8a16-fp8", torch.float32)
    assert log == ["dit: 2 layers (w8a8-fp8 file, computed as w8a16-fp8)"]
    assert all(m.scheme.name == "w8a16-fp8" for m in model.modules() if isinstance(m, QuantLinear))
    for n, p in model.state_dict().items():
        assert torch.equal(p.view(torch.uint8) if p.dtype == torch.float8_e4m3fn else p,
                           before[n].view(torch.uint8) if p.dtype == torch.float8_e4m3fn else before[n]), n
    with pytest.raises(InputError, match=r"already quantized \(w8a16-fp8\); it cannot be quantized as w8a8-int8"):
        quantize(_pipeline(model), "w8a8-int8", torch.float32)


def test_a_pre_quantized_fp8_file_computes_weight_only_where_fp8_gemms_cannot_run(monkeypatch):
    model = apply_quant(_Two(), "w8a8-fp8")
    monkeypatch.setattr(Fp8PerChannel, "available", lambda self, device: "fp8 tensor cores need sm89+ (test)")
    with pytest.warns(UserWarning, match=r"w8a8-fp8 weights computed as w8a16-fp8 \(fp8 tensor cores need sm89\+"):
        log = check_quant_compute(_pipeline(model), torch.device("cpu"))
    assert log == ["dit: 2 w8a8-fp8 layers computed as w8a16-fp8 (fp8 tensor cores need sm89+ (test))"]
    x = torch.randn(3, 32)
    layer = model.a
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.dequantize_weight(), layer.bias), rtol=0, atol=0)


def test_asking_for_a_scheme_the_device_cannot_run_is_refused_before_loading(monkeypatch):
    from lightx2v.api import make_engine

    monkeypatch.setattr(Fp8PerChannel, "available", lambda self, device: "needs sm89+ (test); use w8a16-fp8")
    with pytest.raises(InputError, match=r"quant 'w8a8-fp8' cannot run on cpu: needs sm89\+ \(test\); use w8a16-fp8"):
        make_engine(device="cpu", quant="w8a8-fp8")
    assert make_engine(device="cpu", quant="w8a16-fp8").quant.scheme == "w8a16-fp8"


def test_w8a8_refuses_layers_its_gemm_cannot_take():
    with pytest.raises(InputError, match=r"w8a8-int8 cannot compute a: its 8-bit GEMM needs in and out features "
                                         r"that are multiples of 16, got 40 x 48 \(use the weight-only w8a16-int8\)"):
        apply_quant(_Two(40, 48), "w8a8-int8")
    apply_quant(_Two(40, 48), "w8a16-int8")  # weight-only takes any shape


@pytest.mark.parametrize("name", ["w8a8-int8", "w8a8-fp8"])
def test_w8a8_layers_compile(name):
    """The 8-bit GEMMs trace under torch.compile (one graph) and give the eager numbers."""
    model = apply_quant(_Two(), name).eval()
    x = torch.randn(5, 32)
    want = model.b(model.a(x))
    compiled = torch.compile(lambda t: model.b(model.a(t)), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), want, rtol=1e-6, atol=1e-6)
