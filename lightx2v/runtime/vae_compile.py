"""The VAE's part of the engine's compile step: regional compile of the decoder's declared blocks.

`apply_engine` calls `compile_vae` when `CompileConfig(enabled=True, vae=True)`: the same
transform as the DiT's (`compile_blocks`, on the VAE's `_repeated_blocks`: the decoder's middle
and stages; lightx2v.models.wan.vae_decode), with one difference: the decoder calls its blocks
with more shapes than a DiT (each stage's width and size; the first, second and later chunks),
so each compiled block runs under a higher dynamo recompile limit (scoped to its calls, no global
setting changes). Off by default; the first decode compiles (docs/benchmarks.md has its time).
"""

from __future__ import annotations

from torch import nn

from lightx2v.config import CompileConfig

# graphs one block code object may keep (dynamo's default, 8, is below the decoder's variants)
VAE_RECOMPILE_LIMIT = 64


def compile_vae(vae: nn.Module, cfg: CompileConfig) -> int:
    """Compile the VAE decoder's repeated blocks in place; returns how many."""
    import torch._dynamo

    from lightx2v.runtime.engine import compile_blocks

    n = compile_blocks(vae, cfg)
    for name in vae._repeated_blocks:
        for block in vae.get_submodule(name):
            block._compiled_call_impl = torch._dynamo.config.patch(recompile_limit=VAE_RECOMPILE_LIMIT)(
                block._compiled_call_impl)
    return n
