"""The block loop every DiT's `run_blocks` shares: a range of its repeated blocks, with the model's
`block_hooks` (block offload: lightx2v.runtime.block_offload) around each block, outside it, so a
compiled block never sees them.

    for i in hooked_blocks(len(self.blocks), self.block_hooks, kw.get("blocks", slice(None))):
        x = self.blocks[i](x, ...)      # before_block(i) ran before this body, after_block(i) after it
"""

from __future__ import annotations

from typing import Iterator


def hooked_blocks(n: int, hooks, blocks: slice = slice(None)) -> Iterator[int]:
    """The indices of `range(n)[blocks]`; `hooks.before_block(i)` before each body, `after_block(i)` after."""
    for i in range(n)[blocks]:
        if hooks is not None:
            hooks.before_block(i)
        yield i
        if hooks is not None:
            hooks.after_block(i)
