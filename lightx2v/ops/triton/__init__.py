"""Our own Triton kernels (kernels only; their dispatch points live in lightx2v/ops: attention.py, fused.py).

Modules here import `triton` at their top, so they are imported lazily, inside a kernel call or a
capability check, never when `lightx2v` or `lightx2v.ops` is imported: the default install runs
without Triton. Each kernel has a fp32 reference and a test that compares them (on CPU through
Triton's interpreter, TRITON_INTERPRET=1, set by tests/conftest.py).

    sage8.py   8-bit attention, SageAttention-style (FP8 or INT8 Q.K^T, FP8 or FP16 P.V)
    norms.py   LayerNorm + modulation, q/k RMSNorm + 3D RoPE, gated residual add
"""
