"""`qk_norm_rope`'s HunyuanVideo-1.5 forms (lightx2v.ops.fused): the RMSNorm per head (`per_head`, a [D]
weight) and no rotation (`rope` None, the text stream), Triton (interpreter on CPU) against the torch
reference, and the reference against the expressions the HV1.5 block computed before it had fused ops
(bit for bit). The across-heads form (Wan's) is tests/ops/test_fused.py's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightx2v.models.hunyuan15.dit_blocks import rope_table
from lightx2v.models.wan.dit_blocks import apply_rope
from lightx2v.ops.fused import get_fused

pytest.importorskip("triton")

REF, TRI = get_fused("torch"), get_fused("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, L = 2, 19


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(c: int, heads: int, in_dtype: torch.dtype, rope: bool):
    d = c // heads
    table = rope_table((1, 1, L), (0, 0, d), 256.0, torch.device(DEV)) if rope else None  # [L, 1, D/2, 2]
    x = (3.0 * torch.randn(B, L, c, generator=_g(1))).to(DEV, in_dtype)
    w = (1.0 + 0.2 * torch.randn(d, generator=_g(2))).to(DEV)
    return x, w, table


def _old_hv15(x, w, eps, rope, heads, dt):
    # MMDoubleStreamBlock._qkv before fused ops: RMSNormFP32(head_dim) on [B, L, H, D], RoPE, one cast
    q = F.rms_norm(x.unflatten(-1, (heads, -1)).float(), (x.shape[-1] // heads,), w.float(), eps)
    return (q if rope is None else apply_rope(q, rope)).to(dt)


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_reference_is_the_blocks_old_expression(rope, in_dtype):
    x, w, table = _inputs(96, 3, in_dtype, rope)
    for dt in (torch.float32, torch.bfloat16):
        out = REF.qk_norm_rope(x, w, 1e-6, table, 3, dt, per_head=True)
        assert out.shape == (B, L, 3, 32) and out.dtype == dt
        assert torch.equal(out, _old_hv15(x, w, 1e-6, table, 3, dt))


@pytest.mark.parametrize("c,heads,in_dtype,rope", [(64, 2, torch.float32, True), (96, 3, torch.bfloat16, True),
                                                   (64, 4, torch.float32, False)])
def test_triton_per_head_matches_reference(c, heads, in_dtype, rope):
    x, w, table = _inputs(c, heads, in_dtype, rope)
    out = TRI.qk_norm_rope(x, w, 1e-6, table, heads, torch.float32, per_head=True)
    ref = REF.qk_norm_rope(x, w, 1e-6, table, heads, torch.float32, per_head=True)
    assert out.shape == ref.shape == (B, L, heads, c // heads)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # per head, not across the heads: a head scaled by 8 (exact in bf16) gives the same normalised head
    x2 = x.clone()
    x2[..., : c // heads] *= 8
    again = TRI.qk_norm_rope(x2, w, 1e-6, table, heads, torch.float32, per_head=True)
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-5)


def test_triton_without_rope_matches_reference_across_heads_too():
    c, heads = 64, 2
    x = torch.randn(B, L, c, generator=_g(3)).to(DEV)
    w = (1.0 + 0.2 * torch.randn(c, generator=_g(4))).to(DEV)
    out = TRI.qk_norm_rope(x, w, 1e-6, None, heads, torch.float32)
    ref = REF.qk_norm_rope(x, w, 1e-6, None, heads, torch.float32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(ref, F.rms_norm(x, (c,), w, 1e-6).unflatten(-1, (heads, -1)))


def test_per_head_traces_without_graph_breaks():
    x, w, table = _inputs(64, 2, torch.float32, True)

    def f(x):
        return TRI.qk_norm_rope(x, w, 1e-6, table, 2, torch.float32, per_head=True) + \
            TRI.qk_norm_rope(x, w, 1e-6, None, 2, torch.float32, per_head=True)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(x), f(x), rtol=1e-6, atol=1e-6)
