"""Token chunking: the DiT blocks' token-wise work run a chunk of tokens at a time (a small GPU).

A block's activation peak is whole-sequence temporaries: the modulated norm, q/k/v before and after
their norm and RoPE, the FFN's hidden state (Wan 14B, bf16: ~150 KB a token, 4.7 GiB at 480P x 81
frames). Only self-attention's softmax needs every token at once, so a block that declares
`chunk_tokens` (Wan's `WanBlock._forward_chunked`) fills q, k, v chunk by chunk, runs attention once,
and runs the output projection, the cross-attention and the FFN per chunk, writing the residual in
place: what stays alive is the residual, q, k, v and the attention output (~12 x dim bytes a token
in bf16) plus one chunk's temporaries. The arithmetic per token is unchanged (a GEMM over fewer rows
may round differently in its last bits). Switched off with chunk_tokens=0; the memory planner
(lightx2v.runtime.planner) switches it on when the activations are what does not fit.
"""

from __future__ import annotations

from torch import nn


def apply_chunking(model: nn.Module, tokens: int) -> int:
    """Set `chunk_tokens` on every repeated block (`_repeated_blocks`) of `model` whose class declares
    it; returns how many (0: the model has no chunked path, and runs as it is)."""
    n = 0
    for attr in getattr(model, "_repeated_blocks", ()):
        for block in model.get_submodule(attr):
            if hasattr(type(block), "chunk_tokens"):
                block.chunk_tokens = int(tokens)
                n += 1
    return n
