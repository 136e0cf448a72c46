"""The attention dispatch point: every backend that runs here agrees with the fp32 reference;
resolution picks the right backend and refuses, with a reason, those that cannot run."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from torch import nn

from lightx2v.errors import LightX2VError
from lightx2v.ops.attention import (
    AttentionBackend,
    get_backend,
    list_backends,
    resolve_attention,
    set_attention_backend,
)

CPU = torch.device("cpu")


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Loop-per-head float64 attention, independent of the library's reference."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            s = q[b, :, h].double() @ k[b, :, h].double().T / q.shape[-1] ** 0.5
            out[b, :, h] = torch.softmax(s, dim=-1) @ v[b, :, h].double()
    return out


def _runnable_on_cpu() -> list[str]:
    return [n for n in list_backends() if get_backend(n).available(CPU, torch.float32) is None]


def test_registry_names() -> None:
    names = list_backends()
    for n in ("reference", "torch_sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flash_attn", "sage_attn"):
        assert n in names
    assert _runnable_on_cpu() == ["reference", "torch_sdpa", "ssta"]  # ssta: FlexAttention unfused on CPU


@pytest.mark.parametrize("lq,lk", [(37, 37), (13, 29), (64, 5)])
def test_reference_matches_naive(lq: int, lk: int) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, lq, 3, 16), torch.randn(2, lk, 3, 16), torch.randn(2, lk, 3, 16)
    ref = _naive(q, k, v)
    out = get_backend("reference")(q, k, v)
    assert out.shape == (2, lq, 3, 16) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("name", ["torch_sdpa"])
@pytest.mark.parametrize("lq,lk", [(37, 37), (13, 29), (64, 5), (1, 50)])
def test_cpu_backends_match_reference(name: str, lq: int, lk: int) -> None:
    assert name in _runnable_on_cpu()
    torch.manual_seed(1)
    q = torch.randn(2, lq, 4, 24) * 2
    k, v = torch.randn(2, lk, 4, 24) * 2, torch.randn(2, lk, 4, 24)
    ref = get_backend("reference")(q, k, v)
    out = resolve_attention(name, CPU, torch.float32)(q, k, v)
    assert out.shape == ref.shape == (2, lq, 4, 24)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_cpu_backend_bf16_close_to_reference() -> None:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 19, 2, 32) for _ in range(3))
    ref = get_backend("reference")(q, k, v)
    out = resolve_attention("torch_sdpa", CPU, torch.bfloat16)(*(t.bfloat16() for t in (q, k, v)))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 3e-2 * ref.abs().max()


def test_auto_on_cpu_is_torch_sdpa() -> None:
    assert resolve_attention("auto", "cpu", torch.float32).name == "torch_sdpa"
    assert resolve_attention("auto", CPU, torch.bfloat16).name == "torch_sdpa"


@pytest.mark.parametrize(
    "name,reason",
    [("flash_attn", "CUDA"), ("sdpa_cudnn", "CUDA"), ("sdpa_flash", "CUDA"), ("sage_attn", "CUDA")],
)
def test_gpu_backend_on_cpu_raises_with_reason(name: str, reason: str) -> None:
    with pytest.raises(LightX2VError) as info:
        resolve_attention(name, CPU, torch.bfloat16)
    msg = str(info.value)
    assert name in msg and reason in msg and "torch_sdpa" in msg  # names the usable ones
    assert "\n" not in msg


def test_unknown_backend_lists_known() -> None:
    with pytest.raises(LightX2VError, match="unknown attention backend 'nope'.*torch_sdpa.*flash_attn"):
        resolve_attention("nope", CPU, torch.float32)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


def test_auto_on_hopper_prefers_cudnn(monkeypatch, fake_cuda) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # no FA3 (it comes first: test_flash_attn3.py)
    fake_cuda(9, 0)
    assert resolve_attention("auto", "cuda", torch.bfloat16).name == "sdpa_cudnn"
    assert resolve_attention("auto", "cuda:0", torch.float16).name == "sdpa_cudnn"


def test_auto_on_ampere_skips_cudnn(fake_cuda) -> None:
    fake_cuda(8, 0)
    expected = "flash_attn" if _importable("flash_attn") else "sdpa_flash"
    assert resolve_attention("auto", "cuda", torch.bfloat16).name == expected
    assert resolve_attention("sdpa_cudnn", "cuda", torch.bfloat16).name == "sdpa_cudnn"  # explicit still allowed


def test_auto_fp32_on_gpu_is_torch_sdpa(fake_cuda) -> None:
    fake_cuda(9, 0)
    assert resolve_attention("auto", "cuda", torch.float32).name == "torch_sdpa"
    with pytest.raises(LightX2VError, match="sdpa_flash.*float16 or bfloat16.*usable here: auto, reference, torch_sdpa"):
        resolve_attention("sdpa_flash", "cuda", torch.float32)
    assert resolve_attention("sdpa_efficient", "cuda", torch.float32).name == "sdpa_efficient"


def test_old_gpu_and_missing_package_reasons(fake_cuda) -> None:
    fake_cuda(7, 5)
    assert "sm80" in get_backend("sdpa_flash").available("cuda", torch.float16)
    fake_cuda(9, 0)
    if not _importable("sageattention"):
        assert "sageattention" in get_backend("sage_attn").available("cuda", torch.bfloat16)
    if not _importable("flash_attn_interface"):
        assert "flash_attn_interface" in get_backend("flash_attn3").available("cuda", torch.bfloat16)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_backend = get_backend("torch_sdpa")
        self.lin = nn.Linear(2, 2)


def test_set_attention_backend_sets_every_module() -> None:
    model = nn.Sequential(_Attn(), nn.Sequential(_Attn(), nn.ReLU()), nn.Linear(2, 2))
    ref = resolve_attention("reference", CPU, torch.float32)
    assert set_attention_backend(model, ref) is model
    backends = [m.attn_backend for m in model.modules() if hasattr(m, "attn_backend")]
    assert len(backends) == 2 and all(b is ref for b in backends)
    assert not hasattr(model[2], "attn_backend")


def test_backend_is_frozen() -> None:
    b = get_backend("torch_sdpa")
    assert isinstance(b, AttentionBackend)
    kernel = b.kernel
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.kernel = get_backend("reference").kernel  # type: ignore[misc]
    # the shared registry entry is unchanged: a failed assignment must not half-apply
    assert get_backend("torch_sdpa") is b and b.name == "torch_sdpa" and b.kernel is kernel


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_backends_match_reference(dtype: torch.dtype) -> None:
    dev = torch.device("cuda")
    names = [n for n in list_backends() if get_backend(n).available(dev, dtype) is None]
    assert "torch_sdpa" in names
    torch.manual_seed(3)
    for lq, lk in ((77, 77), (300, 29)):
        q = torch.randn(2, lq, 4, 128, device=dev)
        k, v = torch.randn(2, lk, 4, 128, device=dev), torch.randn(2, lk, 4, 128, device=dev)
        q, k, v = (t.to(dtype) for t in (q, k, v))
        ref = get_backend("reference")(q, k, v).float()
        for name in (n for n in names if n not in ("sage8", "fa3_fp8")):  # lossy fp8: test_sage8.py, test_flash_attn3.py
            tol_n = 5e-2 if name == "sage_attn" else (1e-3 if dtype == torch.float32 else 1e-2)
            out = resolve_attention(name, dev, dtype)(q, k, v)
            assert out.shape == q.shape and out.dtype == dtype, name
            err = (out.float() - ref).abs().max().item()
            assert err <= tol_n * ref.abs().max().item(), f"{name} {dtype}: err {err}"
    if dtype != torch.float32 and torch.cuda.get_device_capability(dev) >= (9, 0):
        fa3 = get_backend("flash_attn3").available(dev, dtype) is None  # Hopper, installed, this dtype built
        assert resolve_attention("auto", dev, dtype).name == ("flash_attn3" if fa3 else "sdpa_cudnn")
