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
        if q.dtype == torch.float8_e4m3fn:  # FA3's fp8 form: x = x8 * descale[b, h]; the output in bf16
            q, k, v = (t.float() * d[:, None, :, None] for t, d in zip((q, k, v), (q_descale, k_descale, v_descale)))
            return REF(q, k, v).to(torch.bfloat16)
        out = REF(q, k, v)  # [B, Lq, H, D], FA3's layout and dtype
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])  # [B, H, Lq]
        return (out, lse) if returns_lse or return_attn_probs else out

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    monkeypatch.setitem(sys.modules, "flash_attn_config", None)  # no build config: a full build (not a real one on the path)
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
    # installed on Hopper, FA3 is what "auto" takes (lossless, faster than cuDNN SDPA); never its fp8 form
    assert resolve_attention("auto", "cuda", torch.bfloat16) is backend
    assert get_backend("fa3_fp8").available("cuda", torch.bfloat16) is None
    fake_cuda(8, 9)  # FA3's kernels are sm90a only: neither older nor newer GPUs
    assert "sm90" in backend.available("cuda", torch.bfloat16)
    fake_cuda(10, 0)
    assert "Hopper" in backend.available("cuda", torch.bfloat16)
    assert "Hopper" in get_backend("fa3_fp8").available("cuda", torch.bfloat16)
    assert resolve_attention("auto", "cuda", torch.bfloat16).name == "sdpa_cudnn"
    assert "CUDA" in backend.available("cpu", torch.bfloat16)


def test_flash_attn3_missing_package_is_named(monkeypatch, fake_cuda) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import raises ImportError
    fake_cuda(9, 0)
    reason = get_backend("flash_attn3").available("cuda", torch.bfloat16)
    assert reason is not None and "flash_attn_interface" in reason and "\n" not in reason


def test_quantize_per_head_is_e4m3_with_one_scale_per_batch_and_head() -> None:
    from lightx2v.ops.fa3_fp8 import E4M3_MAX, quantize_per_head

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 33, 3, 16, generator=g) * torch.tensor([1.0, 10.0, 0.01])[None, None, :, None]
    x = (x + 5.0).to(torch.bfloat16)  # a channel offset, as keys have
    for smooth in (False, True):
        x8, d, mean = quantize_per_head(x, smooth=smooth)
        assert (mean is None) == (not smooth)
        if smooth:
            torch.testing.assert_close(mean, x.float().mean(dim=1, keepdim=True))
        assert x8.dtype == torch.float8_e4m3fn and x8.shape == x.shape and d.shape == (2, 3) and d.dtype == torch.float32
        target = x.float() - (x.float().mean(dim=1, keepdim=True) if smooth else 0.0)
        # the scale from the one-pass max/min/mean is the amax of |x - mean| itself, to the bit
        torch.testing.assert_close(d, target.abs().amax(dim=(1, 3)) / E4M3_MAX, rtol=0, atol=0)
        # the largest magnitude of each (batch, head) lands on e4m3's largest value; the rest within e4m3's rounding
        assert torch.equal(x8.float().abs().amax(dim=(1, 3)), torch.full((2, 3), E4M3_MAX))
        back = x8.float() * d[:, None, :, None]
        assert ((back - target).abs() <= target.abs() * 2**-4 + d[:, None, :, None] * 2**-9).all()
    # smoothing takes a channel offset out of the range: a finer grid, a smaller error
    y = (torch.randn(1, 64, 2, 16, generator=g) + 5.0 * torch.randn(1, 1, 2, 16, generator=g)).to(torch.bfloat16)
    err = []
    for smooth in (False, True):
        y8, d, _ = quantize_per_head(y, smooth=smooth)
        err.append((y8.float() * d[:, None, :, None] - (y.float() - (y.float().mean(1, keepdim=True) if smooth else 0))).norm())
    assert err[1] < 0.5 * err[0], err


def test_fa3_fp8_hands_fa3_e4m3_tensors_with_their_descales(monkeypatch) -> None:
    calls = _fake_fa3(monkeypatch, returns_lse=False)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, n, 4, 32, generator=g) for n in (40, 24, 24))
    k = k + 3.0  # keys with an offset: smoothing removes it, and the softmax does not see it
    v = v + 4.0  # values with an offset: FA3 gets v without it, the output gets it back
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out = get_backend("fa3_fp8")(q, k, v)
    (call,) = calls
    assert all(t.dtype == torch.float8_e4m3fn for t in (call["q"], call["k"], call["v"]))
    assert all(d.shape == (1, 4) and d.dtype == torch.float32 for d in call["descale"])
    assert call["softmax_scale"] is None and call["causal"] is False
    # k reaches FA3 without its mean over tokens: exact for softmax attention
    for name, descale in (("k", call["descale"][1]), ("v", call["descale"][2])):
        assert call[name].float().mul(descale[:, None, :, None]).mean(dim=1).abs().max() < 0.05, name
    ref = REF(q.float(), k.float(), v.float())
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.03, rel  # e4m3 rounding of q, k, v (P stays exact in this stand-in), the offset of v exact


def _fa3_installed() -> bool:
    try:
        import flash_attn_interface  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not _fa3_installed(), reason="needs a Hopper GPU with FlashAttention-3 (benchmarks/fa3_build.sh)")
@pytest.mark.parametrize("lq,lk,d", [(1000, 1000, 128), (4097, 4097, 128), (3000, 512, 128), (1000, 999, 64), (777, 1000, 80)])
def test_fa3_kernels_on_the_gpu(lq: int, lk: int, d: int) -> None:
    # head dims below 128 run a build with only the hdim-128 kernels (FA3 rounds the head dim up)
    g = torch.Generator("cuda").manual_seed(3)
    q, k, v = (torch.randn(2, n, 8, d, device="cuda", generator=g, dtype=torch.bfloat16) for n in (lq, lk, lk))
    k = k + 2.0 * torch.randn(1, 1, 8, d, device="cuda", generator=g, dtype=torch.bfloat16)  # a channel offset
    ref = REF(q, k, v).float()
    for name, bound in (("flash_attn3", 1e-2), ("fa3_fp8", 8e-2)):
        out = get_backend(name)(q, k, v)
        assert out.shape == q.shape and out.dtype == torch.bfloat16
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        assert rel < bound, (name, rel)


def test_a_build_without_a_dtype_is_not_offered_for_it(monkeypatch, fake_cuda) -> None:
    """A kernel left out of an FA3 build crashes the process when called: the build's own
    flash_attn_config (written by its setup.py) decides what the checks offer."""
    _fake_fa3(monkeypatch, returns_lse=False)
    fake_cuda(9, 0)
    config = types.ModuleType("flash_attn_config")
    config.CONFIG = {"build_flags": {"FLASHATTENTION_DISABLE_FP16": True, "FLASHATTENTION_DISABLE_FP8": False}}
    monkeypatch.setitem(sys.modules, "flash_attn_config", config)
    fa3, fa3_fp8 = get_backend("flash_attn3"), get_backend("fa3_fp8")
    assert fa3.available("cuda", torch.bfloat16) is None and fa3_fp8.available("cuda", torch.bfloat16) is None
    assert "no float16 kernels" in fa3.available("cuda", torch.float16)
    assert resolve_attention("auto", "cuda", torch.float16).name == "sdpa_cudnn"  # auto passes over it
    config.CONFIG = {"build_flags": {"FLASHATTENTION_DISABLE_FP16": False, "FLASHATTENTION_DISABLE_FP8": True}}
    assert fa3.available("cuda", torch.float16) is None
    assert "no fp8 kernels" in fa3_fp8.available("cuda", torch.bfloat16)
