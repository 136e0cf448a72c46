"""The flash_attn3 backend against a stand-in `flash_attn_interface` (FA3 is a Hopper build, never
installed here): the capability check, the call FA3's `flash_attn_func` receives, and both return
forms (the output alone, current FA3; `(out, lse)`, earlier FA3 releases)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lightx2v.ops.attention import get_backend, resolve_attention

REF = get_backend("reference")


def _fake_fa3(monkeypatch: pytest.MonkeyPatch, returns_lse: bool) -> list:
    """Install a `flash_attn_interface` whose flash_attn_func is the fp32 reference; returns its call log."""
    calls: list = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                        v_descale=None, window_size=(-1, -1), return_attn_probs=False, **rest):
        calls.append(dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                          descale=(q_descale, k_descale, v_descale), rest=rest))
        out = REF(q, k, v)  # [B, Lq, H, D], FA3's layout and dtype
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])  # [B, H, Lq]
        return (out, lse) if returns_lse or return_attn_probs else out

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    return calls


@pytest.mark.parametrize("returns_lse", [False, True])
def test_flash_attn3_calls_fa3_and_returns_the_output(monkeypatch, returns_lse: bool) -> None:
    calls = _fake_fa3(monkeypatch, returns_lse)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7 if i == 0 else 5, 3, 16, generator=g).to(torch.bfloat16) for i in range(3))
    out = get_backend("flash_attn3")(q, k, v)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, 3, 16) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, REF(q, k, v))
    (call,) = calls
    # [B, L, H, D] handed over as is (no transpose, no copy); FA3's defaults: 1/sqrt(D), not causal, no window
    assert call["q"] is q and call["k"] is k and call["v"] is v
    assert call["softmax_scale"] is None and call["causal"] is False and call["window_size"] == (-1, -1)
    assert call["descale"] == (None, None, None) and call["rest"] == {}


def test_flash_attn3_capability(monkeypatch, fake_cuda) -> None:
    backend = get_backend("flash_attn3")
    _fake_fa3(monkeypatch, returns_lse=False)
    fake_cuda(9, 0)
    assert backend.available("cuda", torch.bfloat16) is None
    assert backend.available("cuda", torch.float16) is None
    assert "float16 or bfloat16" in backend.available("cuda", torch.float32)
    assert resolve_attention("flash_attn3", "cuda", torch.bfloat16) is backend
    # FA3 is asked for by name: "auto" keeps cuDNN SDPA first on Hopper even with FA3 present
    assert resolve_attention("auto", "cuda", torch.bfloat16).name == "sdpa_cudnn"
    fake_cuda(8, 9)  # FA3's kernels are sm90a only
    assert "sm90" in backend.available("cuda", torch.bfloat16)
    assert "CUDA" in backend.available("cpu", torch.bfloat16)


def test_flash_attn3_missing_package_is_named(monkeypatch, fake_cuda) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import raises ImportError
    fake_cuda(9, 0)
    reason = get_backend("flash_attn3").available("cuda", torch.bfloat16)
    assert reason is not None and "flash_attn_interface" in reason and "\n" not in reason
