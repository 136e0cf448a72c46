"""One dispatch point for attention.

Design: every attention call in a model goes through `module.attn_backend(q, k, v)` with
q, k, v laid out `[B, L, H, D]` (the layout of the official Wan code and of flash-attn), no mask,
no causality: the output is `[B, Lq, H, D]` in the dtype of q.

Backends live in a read-only registry. Each is a small frozen object with a `name`, a capability
check `available(device, dtype) -> str | None` (None: it can run; otherwise the reason it cannot)
and `__call__(q, k, v)`. Optional packages (flash-attn, sageattention) are imported inside the
capability check and the kernel call, never when this module is imported.

`resolve_attention(name, device, dtype)` turns a user's choice into a backend at build time:
"auto" takes the first that can run in `AUTO_ORDER`; an explicit name that cannot run is a
`LightX2VError`, not a silent fallback. `set_attention_backend(model, backend)` is the transform
that puts the backend on every module with an `attn_backend` attribute; there is no global state.
`reference` (explicit fp32 softmax) is the oracle the others are tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import LightX2VError
from lightx2v.ops.registry import lookup, require

Check = Callable[[torch.device, torch.dtype], "str | None"]
Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]
LayoutKernel = Callable[[Tensor, Tensor, Tensor, Any], Tensor]

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AttentionBackend:
    """A named attention kernel with a capability check; call it as `backend(q, k, v)`."""

    name: str
    check: Check
    kernel: Kernel
    description: str = ""
    # a sparse backend's kernel for calls that describe their tokens (`layout`, e.g. ops/ssta.SSTALayout);
    # None: a dense backend, which callers never hand a layout (`takes_layout`)
    layout_kernel: LayoutKernel | None = None

    @property
    def takes_layout(self) -> bool:
        return self.layout_kernel is not None

    def available(self, device: torch.device | str, dtype: torch.dtype) -> str | None:
        """None if this backend can run on `device` with `dtype`, else the reason it cannot."""
        return self.check(torch.device(device), dtype)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, layout: Any = None) -> Tensor:
        # q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D]
        if layout is not None and self.layout_kernel is not None:
            return self.layout_kernel(q, k, v, layout)
        return self.kernel(q, k, v)

    def __repr__(self) -> str:
        return f"AttentionBackend({self.name!r})"


# ---------------------------------------------------------------- capability checks


def _any_device(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _cuda_arch(device: torch.device, min_sm: int) -> str | None:
    """None if `device` is a CUDA device of compute capability >= min_sm (e.g. 80)."""
    if device.type != "cuda":
        return f"needs a CUDA device, got {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available in this torch build or machine"
    major, minor = torch.cuda.get_device_capability(device)
    if major * 10 + minor < min_sm:
        return f"needs compute capability sm{min_sm}+, this GPU is sm{major}{minor}"
    return None


def _half_dtype(dtype: torch.dtype) -> str | None:
    return None if dtype in _HALF else f"needs float16 or bfloat16, got {dtype}"


def _importable(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # a broken build raises OSError/RuntimeError, not only ImportError
        return f"package {module!r} cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]
    return None


def _all(*checks: Callable[[], str | None]) -> str | None:
    for c in checks:
        reason = c()
        if reason is not None:
            return reason
    return None


def _check_sdpa_cuda(min_sm: int, half_only: bool) -> Check:
    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        return _all(
            lambda: _cuda_arch(device, min_sm),
            lambda: _half_dtype(dtype) if half_only else None,
        )

    return check


def _check_cudnn(device: torch.device, dtype: torch.dtype) -> str | None:
    return _all(
        lambda: _cuda_arch(device, 80),
        lambda: _half_dtype(dtype),
        lambda: None if torch.backends.cudnn.is_available() else "cuDNN is not available",
    )


def _check_package(module: str, min_sm: int) -> Check:
    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        return _all(lambda: _cuda_arch(device, min_sm), lambda: _half_dtype(dtype), lambda: _importable(module))

    return check


def _fa3_build_lacks(dtype: torch.dtype, fp8: bool) -> str | None:
    """FA3 builds may leave dtypes out (FLASH_ATTENTION_DISABLE_FP16 / _FP8); its generated
    `flash_attn_config.CONFIG` says which, and a call into a kernel that was not built crashes the
    process rather than raising, so the capability check reads it. No config file: a full build."""
    try:
        from flash_attn_config import CONFIG

        flags = CONFIG["build_flags"]
    except Exception:
        return None
    for wanted, flag in ((fp8, "FLASHATTENTION_DISABLE_FP8"), (dtype == torch.float16, "FLASHATTENTION_DISABLE_FP16")):
        if wanted and flags.get(flag):
            return f"this FlashAttention-3 build has no {'fp8' if flag.endswith('FP8') else 'float16'} kernels ({flag})"
    return None


def _check_fa3(fp8: bool) -> Check:
    """FlashAttention-3's kernels are built for sm90a (Hopper) only: an sm100 GPU cannot run them."""

    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        def hopper() -> str | None:
            major, minor = torch.cuda.get_device_capability(device)
            return None if major == 9 else f"needs a Hopper GPU (sm90), this GPU is sm{major}{minor}"

        return _all(lambda: _cuda_arch(device, 90), hopper, lambda: _half_dtype(dtype),
                    lambda: _importable("flash_attn_interface"), lambda: _fa3_build_lacks(dtype, fp8))

    return check


def _check_flex(device: torch.device, dtype: torch.dtype) -> str | None:
    """FlexAttention (torch >= 2.5): compiled on CUDA sm80+ (Triton), its unfused form on CPU."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except Exception as exc:
        return f"torch.nn.attention.flex_attention cannot be imported ({type(exc).__name__})"
    if device.type == "cpu":
        return None
    return _all(lambda: _cuda_arch(device, 80), lambda: _importable("triton"))


# ---------------------------------------------------------------- kernels


def _reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V in float32, written out: the oracle."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    out = torch.matmul(scores.softmax(dim=-1), vf)  # [B, H, Lq, D]
    return out.transpose(1, 2).to(q.dtype)


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # SDPA wants [B, H, L, D]; transposes are views, the kernels accept the strides.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sdpa_with(backend_name: str) -> Kernel:
    def kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, backend_name)]):
            return _sdpa(q, k, v)

    return kernel


def _flash_attn2(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)


def _flash_attn3(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # some FA3 versions also return the LSE


def _fa3_fp8(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from lightx2v.ops.fa3_fp8 import fa3_fp8_attention

    return fa3_fp8_attention(q, k, v)


def _sage_attn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


def _ssta(q: Tensor, k: Tensor, v: Tensor, layout: Any) -> Tensor:
    from lightx2v.ops.ssta import ssta_flex

    return ssta_flex(q, k, v, layout)


def _ssta_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from lightx2v.ops.ssta import ssta_dense

    return ssta_dense(q, k, v)


def _sage8(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from lightx2v.ops.triton.sage8 import sage8_attention  # imports triton: only when called

    return sage8_attention(q, k, v)


# ---------------------------------------------------------------- registry

_BACKENDS: Mapping[str, AttentionBackend] = MappingProxyType(
    {
        b.name: b
        for b in (
            AttentionBackend("reference", _any_device, _reference, "explicit fp32 softmax, the oracle"),
            AttentionBackend("torch_sdpa", _any_device, _sdpa, "F.scaled_dot_product_attention, torch picks"),
            AttentionBackend("sdpa_cudnn", _check_cudnn, _sdpa_with("CUDNN_ATTENTION"), "SDPA, cuDNN only"),
            AttentionBackend(
                "sdpa_flash", _check_sdpa_cuda(80, half_only=True), _sdpa_with("FLASH_ATTENTION"), "SDPA, flash only"
            ),
            AttentionBackend(
                "sdpa_efficient",
                _check_sdpa_cuda(50, half_only=False),
                _sdpa_with("EFFICIENT_ATTENTION"),
                "SDPA, memory-efficient only",
            ),
            AttentionBackend("flash_attn3", _check_fa3(fp8=False), _flash_attn3, "FlashAttention-3 (Hopper), bf16/fp16"),
            AttentionBackend(
                "fa3_fp8", _check_fa3(fp8=True), _fa3_fp8, "FlashAttention-3's FP8 kernel (Hopper), per-head scales, lossy, opt-in"
            ),
            AttentionBackend("flash_attn", _check_package("flash_attn", 80), _flash_attn2, "flash-attn 2 package"),
            AttentionBackend("sage_attn", _check_package("sageattention", 80), _sage_attn, "SageAttention (int8 QK)"),
            AttentionBackend(
                "sage8",
                _check_package("triton", 80),
                _sage8,
                "8-bit (FP8 on sm89+, INT8 QK on sm80/86) Triton attention, lossy, opt-in",
            ),
            AttentionBackend(
                "ssta",
                _check_flex,
                _ssta_dense,
                "HunyuanVideo-1.5's sparse SSTA (FlexAttention) where a call gives its token layout; SDPA elsewhere",
                layout_kernel=_ssta,
            ),
        )
    }
)

# "auto": fastest first, lossless only. FlashAttention-3 (installed: Hopper only) before cuDNN SDPA:
# 706 vs 572 TOPS at Wan-14B 480P on an H200, a compiled 14B forward 2.61 vs 2.87 s (docs/benchmarks.md);
# cuDNN SDPA only on sm90+, where it measured fastest of torch's own. sage_attn, sage8 and fa3_fp8
# quantize (choices.QUANTIZED_ATTENTION: a user must ask for them); ssta is asked for by a model trained with it (pipelines/hunyuan15.py).
AUTO_ORDER: tuple[str, ...] = ("flash_attn3", "sdpa_cudnn", "flash_attn", "sdpa_flash", "torch_sdpa")


def list_backends() -> list[str]:
    """Names of all registered backends (whether or not they can run here)."""
    return list(_BACKENDS)


def get_backend(name: str) -> AttentionBackend:
    """The registered backend called `name`, without checking that it can run."""
    return lookup(_BACKENDS, name, "attention backend")


def _auto_allows(name: str, device: torch.device) -> bool:
    if name == "sdpa_cudnn":
        return _cuda_arch(device, 90) is None
    return True


def resolve_attention(name: str, device: torch.device | str, dtype: torch.dtype) -> AttentionBackend:
    """The backend to use for `name` ("auto" or a registered name) on `device` with `dtype`.

    Raises LightX2VError if the name is unknown or the backend cannot run here.
    """
    device = torch.device(device)
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = _BACKENDS[candidate]
            if _auto_allows(candidate, device) and backend.available(device, dtype) is None:
                return backend
        raise LightX2VError(f"no attention backend can run on {device} with {dtype}")  # torch_sdpa always can
    return require(_BACKENDS, name, device, dtype, "attention backend")


def attention_role(module: nn.Module) -> str:
    """The role of an attention module: its `attn_role` ("cross" for a DiT's cross-attention), else "self"."""
    return getattr(module, "attn_role", "self")


def set_attention_backend(model: nn.Module, backend: AttentionBackend, role: str | None = None) -> nn.Module:
    """Put `backend` on every submodule of `model` that has an `attn_backend` attribute
    (with `role`: only on those of that role, `attention_role`)."""
    for module in model.modules():
        if hasattr(module, "attn_backend") and (role is None or attention_role(module) == role):
            module.attn_backend = backend
    return model
