"""The fused elementwise ops on the HunyuanVideo-1.5 DiT (lightx2v.ops.fused, `fused_ops` on each double-stream
block and on the head): "torch" is the block as it was written before, bit for bit (its old expressions are
written out here); "triton" (the interpreter on CPU) stays within fp32 rounding of it over a whole tiny DiT;
and it composes with regional compile (no graph break), quantization and block offload.
"""

from __future__ import annotations

import pytest
import torch

from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
from lightx2v.models.hunyuan15.dit_blocks import FinalLayer, MMDoubleStreamBlock, joint_attention, linear
from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig
from lightx2v.models.wan.dit_blocks import apply_rope, compute_dtype
from lightx2v.models.wan.tiny import randomize_
from lightx2v.ops.fused import get_fused, set_fused_backend

pytest.importorskip("triton")

REF, TRI = get_fused("torch"), get_fused("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU machine the kernels compile for real
CFG = dict(in_channels=4, out_channels=4, hidden_size=64, heads_num=2, num_layers=2, num_refiner_layers=1,
           mlp_width_ratio=2.0, rope_dim_list=(8, 12, 12), text_states_dim=24, byt5_dim=20, vision_states_dim=12)


def _tiny(dtype: torch.dtype = torch.float32, **over) -> HunyuanVideo15DiT:
    model = randomize_(HunyuanVideo15DiT(HunyuanVideo15DiTConfig(**{**CFG, **over})), seed=5).eval()
    if dtype != torch.float32:  # the blocks' linears in bf16, norms and modulation inputs fp32 (as loaded)
        for m in model.double_blocks.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(dtype)
    return model


def _inputs(small: bool = False) -> tuple:
    """Two samples with unequal conditioning lengths (joint attention per sample); `small` (the Triton tests:
    the interpreter runs one program at a time): 4 image tokens, else 12."""
    g = torch.Generator().manual_seed(1)
    grid = (1, 2, 2) if small else (2, 2, 3)
    text_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]] if small else
                             [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    return (torch.randn(2, 4, *grid, generator=g), torch.tensor([500.0, 730.0]),
            torch.randn(2, 6, 24, generator=g), text_mask, torch.randn(2, 4, 20, generator=g),
            torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]), None, torch.randn(2, 5, *grid, generator=g))


def _run(model, small: bool = False) -> torch.Tensor:
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(*(t if t is None else t.to(dev) for t in _inputs(small)))


# ---------------------------------------------------------------- the block before fused ops, written out


def _old_modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _old_qkv(b, s, x, shift, scale, rope):
    dt = compute_dtype(getattr(b, f"{s}_attn_q"))
    h = _old_modulate(getattr(b, f"{s}_norm1")(x), shift, scale).to(dt)
    q, k, v = (getattr(b, f"{s}_attn_{p}")(h).unflatten(-1, (b.heads, -1)) for p in ("q", "k", "v"))
    q, k = getattr(b, f"{s}_attn_q_norm")(q), getattr(b, f"{s}_attn_k_norm")(k)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    return q.to(dt), k.to(dt), v.to(dt)


def _old_mlp(b, s, x, attn, mod):
    _, _, gate, shift2, scale2, gate2 = mod
    x = x + linear(getattr(b, f"{s}_attn_proj"), attn).float() * gate[:, None]
    y = getattr(b, f"{s}_mlp")(_old_modulate(getattr(b, f"{s}_norm2")(x), shift2, scale2))
    return x + y.float() * gate2[:, None]


def _old_block(b, img, txt, vec, rope, txt_valid, layout=None):
    img_mod, txt_mod = b.img_mod(vec).chunk(6, dim=-1), b.txt_mod(vec).chunk(6, dim=-1)
    li = img.shape[1]
    iq, ik, iv = _old_qkv(b, "img", img, img_mod[0], img_mod[1], rope)
    tq, tk, tv = _old_qkv(b, "txt", txt, txt_mod[0], txt_mod[1], None)
    valid = None if txt_valid is None else [li + n for n in txt_valid]
    attn = joint_attention(b.attn_backend, torch.cat([iq, tq], 1), torch.cat([ik, tk], 1),
                           torch.cat([iv, tv], 1), valid, layout).flatten(2)
    return _old_mlp(b, "img", img, attn[:, :li], img_mod), _old_mlp(b, "txt", txt, attn[:, li:], txt_mod)


def _old_head(h, x, vec):
    shift, scale = linear(h.adaLN_modulation[1], h.adaLN_modulation[0](vec)).float().chunk(2, dim=-1)
    return linear(h.linear, _old_modulate(h.norm_final(x), shift, scale))


@pytest.mark.parametrize("dtype,qk_norm", [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)])
def test_torch_ops_are_the_old_blocks_bit_for_bit(monkeypatch, dtype, qk_norm):
    model = _tiny(dtype, qk_norm=qk_norm)
    assert all(b.fused_ops is REF for b in model.double_blocks) and model.final_layer.fused_ops is REF
    new = _run(model)
    monkeypatch.setattr(MMDoubleStreamBlock, "forward", _old_block)
    monkeypatch.setattr(FinalLayer, "forward", _old_head)
    assert torch.equal(new, _run(model))


def test_the_chunked_image_stream_uses_the_same_ops():
    model = _tiny()
    whole = _run(model)
    calls = []
    for b in model.double_blocks:
        b.chunk_tokens = 5  # 12 image tokens: chunks of 5, 5, 2
    set_fused_backend(model, _counting(REF, calls))
    torch.testing.assert_close(_run(model), whole, rtol=1e-5, atol=1e-6)
    assert calls.count("norm_modulate") == 2 * (3 + 3 + 1 + 1) + 1  # per block: img chunks x 2, txt x 2; the head


def _counting(ops, calls):
    from lightx2v.ops.fused import FusedOps

    def count(name):
        fn = getattr(ops, name)
        return lambda *a, **k: calls.append(name) or fn(*a, **k)

    return FusedOps(ops.name, ops.check, count("norm_modulate"), count("qk_norm_rope"), count("gated_residual"))


# ---------------------------------------------------------------- triton


def test_triton_whole_dit_within_fp32_rounding(monkeypatch):
    from lightx2v.ops.triton import norms

    model = _tiny(num_layers=1).to(DEV)
    ref = _run(model, small=True)
    assert set_fused_backend(model, TRI) == 1 + 1  # the block and the head
    launched = []
    launch = norms._launch
    monkeypatch.setattr(norms, "_launch", lambda kernel, *a, **k: launched.append(kernel) or launch(kernel, *a, **k))
    out = _run(model, small=True)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # per block: 4 norm_modulate, 4 qk_norm_rope (img and txt q, k), 4 gated_residual; the head: 1
    assert len(launched) == 12 + 1 and launched.count(norms._qk_norm_rope_kernel) == 4


def test_triton_blocks_compile_without_graph_breaks():
    from torch._dynamo.utils import counters

    from lightx2v.engine_config import CompileConfig
    from lightx2v.runtime.engine import compile_blocks

    model = _tiny(num_layers=1).to(DEV)
    ref = _run(model, small=True)
    set_fused_backend(model, TRI)
    torch._dynamo.reset()
    counters.clear()
    assert compile_blocks(model, CompileConfig(enabled=True, backend="aot_eager", fullgraph=True)) == 1
    out = _run(model, small=True)  # fullgraph: a graph break would raise
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] >= 1
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    torch._dynamo.reset()


def test_triton_with_quantized_linears():
    """w8a8-int8 blocks: the kernels step gives their GEMMs the Triton kernels too; close to the torch run."""
    from lightx2v.quant import QuantLinear, apply_quant

    model = apply_quant(_tiny(num_layers=1).to(DEV), "w8a8-int8", compute_dtype=torch.float32)
    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(quantized) == 2 * 7
    ref = _run(model, small=True)
    set_fused_backend(model, TRI)
    assert all(m.kernels == "triton" for m in quantized)
    out = _run(model, small=True)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-3
