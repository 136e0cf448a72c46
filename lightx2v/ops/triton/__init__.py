"""Triton kernels of lightx2v (kernels only; their dispatch points live in lightx2v.ops)."""
