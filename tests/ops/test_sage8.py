"""sage8 (lightx2v/ops/triton/sage8.py) against the fp32 reference attention.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
on tiny odd shapes that exercise the tails: Lq not a multiple of BLOCK_M=128 (37, 130: two Q
blocks), Lk not a multiple of BLOCK_N=64 (53: one partial tile; 77: a full and a partial tile) and a
multiple (128: full tiles only).
K has a large per-channel mean, which only the smoothing keeps out of the 8 bits.

Bounds: Triton's interpreter casts fp32 -> fp8 by truncation (the GPU rounds to nearest even),
which about triples the fp8 error: a torch emulation of the same algorithm on the same data gives
rel L2 0.15 (fp8/fp8) with truncation and 0.048 with round-to-nearest, and the kernel gives 0.13 in
the interpreter. So the bounds are per place, measured with margin. A broken kernel (a wrong scale,
an unmasked tail, a missing rescale) gives relative errors of order 1. fp8 e4m3 Q.K^T is the
lossiest part (3 mantissa bits; SageAttention 2 keeps Q.K^T in INT8 for that reason).
"""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import LightX2VError
from lightx2v.ops.attention import AUTO_ORDER, get_backend, resolve_attention

sage8 = pytest.importorskip("lightx2v.ops.triton.sage8")  # needs triton (the test extras have it)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FP8_OK = DEV.type == "cpu" or torch.cuda.get_device_capability(DEV) >= (8, 9)
# (qk_format, pv_format) -> (max relative L2, min cosine similarity) against fp32
if DEV.type == "cpu":  # interpreter, truncating fp8 casts; measured 0.11-0.13 / 0.080-0.089 / 0.012-0.013
    BOUNDS = {("fp8", "fp8"): (0.17, 0.985), ("int8", "fp8"): (0.12, 0.993), ("int8", "fp16"): (0.02, 0.9997)}
else:  # round-to-nearest casts; torch emulation: 0.048 / 0.032 / 0.012
    BOUNDS = {("fp8", "fp8"): (0.08, 0.996), ("int8", "fp8"): (0.06, 0.998), ("int8", "fp16"): (0.02, 0.9997)}


def _inputs(b: int, lq: int, lk: int, h: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g)
    k = torch.randn(b, lk, h, d, generator=g) + 4.0 * torch.randn(1, 1, h, d, generator=g)  # mean: smoothed away
    v = torch.randn(b, lk, h, d, generator=g)
    return tuple(t.to(DEV, dtype) for t in (q, k, v))


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.float().flatten(), ref.float().flatten()
    rel = ((o - r).norm() / r.norm()).item()
    cos = torch.nn.functional.cosine_similarity(o, r, dim=0).item()
    return rel, cos


@pytest.mark.parametrize(
    "fmt,lq,lk,d,dtype",
    [
        (("fp8", "fp8"), 37, 53, 64, torch.bfloat16),
        (("fp8", "fp8"), 130, 77, 128, torch.float16),
        (("int8", "fp16"), 37, 53, 64, torch.bfloat16),
        (("int8", "fp16"), 130, 77, 128, torch.bfloat16),
        (("int8", "fp8"), 37, 128, 128, torch.float16),  # Lk a multiple of BLOCK_N: no partial tile
    ],
)
def test_matches_reference(fmt: tuple[str, str], lq: int, lk: int, d: int, dtype: torch.dtype) -> None:
    if "fp8" in fmt and not FP8_OK:
        pytest.skip("fp8 needs sm89+")
    q, k, v = _inputs(2, lq, lk, 2, d, dtype)
    # every output element must be written: start from NaN and run the kernel on the prepared tensors
    out = torch.full(q.shape, float("nan"), device=DEV, dtype=dtype)
    sage8.attend(*sage8.prepare(q, k, v, *fmt), out, lk)
    assert not out.isnan().any(), "sage8 left output elements unwritten"
    ref = get_backend("reference")(q, k, v)
    rel, cos = _errors(out, ref)
    max_rel, min_cos = BOUNDS[fmt]
    assert rel < max_rel and cos > min_cos, f"{fmt} Lq={lq} Lk={lk} D={d}: rel L2 {rel:.4f}, cos {cos:.5f}"


def test_cross_attention_shapes_and_strides() -> None:
    """Through the public entry (the torch.library op): Lq != Lk, a non-contiguous q (a view of a
    [B, H, L, D] tensor), and one batch element alone gives the same bits as inside a batch."""
    q, k, v = _inputs(2, 19, 5, 3, 64, torch.bfloat16, seed=1)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strides of a [B, H, L, D] tensor
    out = sage8.sage8_attention(qt, k, v, "int8", "fp16")
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    rel, cos = _errors(out, get_backend("reference")(q, k, v))
    assert rel < BOUNDS[("int8", "fp16")][0] and cos > BOUNDS[("int8", "fp16")][1], (rel, cos)
    one = sage8.sage8_attention(q[1:].contiguous(), k[1:].contiguous(), v[1:].contiguous(), "int8", "fp16")
    torch.testing.assert_close(one, out[1:], atol=0, rtol=0)


@pytest.mark.parametrize(
    "shape_q,shape_k,dtype,words",
    [
        ((1, 8, 2, 96), (1, 8, 2, 96), torch.bfloat16, "head dim"),
        ((1, 8, 2, 64), (1, 8, 3, 64), torch.bfloat16, "agree"),
        ((1, 8, 2, 64), (1, 8, 2, 64), torch.float32, "float16 or bfloat16"),
    ],
)
def test_rejects_what_it_cannot_run(shape_q, shape_k, dtype, words: str) -> None:
    q, k = torch.zeros(shape_q, dtype=dtype), torch.zeros(shape_k, dtype=dtype)
    with pytest.raises(LightX2VError, match=words):
        sage8.sage8_attention(q, k, k)
    with pytest.raises(LightX2VError, match="qk_format"):
        sage8.sage8_attention(torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16), *(torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16),) * 2, "int4")


def test_registry_opt_in_only() -> None:
    backend = get_backend("sage8")
    reason = backend.available("cpu", torch.bfloat16)
    assert reason is not None and "CUDA" in reason
    assert "sage8" not in AUTO_ORDER
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert resolve_attention("auto", DEV, dtype).name != "sage8"
    if not torch.cuda.is_available():
        with pytest.raises(LightX2VError, match="CUDA"):
            resolve_attention("sage8", "cpu", torch.bfloat16)


def test_registered_as_torch_op() -> None:
    if getattr(torch.library, "triton_op", None) is None:
        pytest.skip("torch < 2.6 has no torch.library.triton_op")
    assert hasattr(torch.ops.lightx2v, "sage8_attention")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_long_sequence() -> None:
    """On the GPU: a longer odd sequence through the autotuned kernel, every format this GPU runs."""
    q, k, v = _inputs(1, 4099, 4099, 4, 128, torch.bfloat16, seed=2)
    ref = get_backend("reference")(q, k, v)
    for fmt in BOUNDS:
        if "fp8" in fmt and not FP8_OK:
            continue
        rel, cos = _errors(sage8.sage8_attention(q, k, v, *fmt), ref)
        # a long sequence averages the output towards 0, so its relative error is larger: 1.5x
        assert rel < 1.5 * BOUNDS[fmt][0] and cos > 1 - 1.5 * (1 - BOUNDS[fmt][1]), f"{fmt}: rel {rel:.4f}, cos {cos:.5f}"
