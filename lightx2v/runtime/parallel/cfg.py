"""CFG parallel: the two guidance branches on the two ranks of a CFG group, joined once per step.

`Guidance(mode="parallel", group=...)` (lightx2v.pipelines.base) calls `both_branches`: rank 0 of
the group runs the conditional branch, rank 1 the unconditional one, and one all-gather of the two
velocities (float32, [2, B, C, T, H, W]) gives both ranks both; each then combines them exactly as the
one-process loop does, so both hold the same latents after the scheduler step. The model function
is told its branch (StepContext.branch "cond" / "uncond"), so a feature cache keeps the state of
the branch it runs, as in the sequential loop. A step whose guidance scale is 1 (a two-expert
model's expert without CFG, a distilled model) runs the conditional branch on both ranks, with no
exchange.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from torch import Tensor


def both_branches(model_fn: Callable, x: Tensor, t: Tensor, cond: Any, uncond: Any, ctx, group) -> tuple[Tensor, Tensor]:
    """(v_cond, v_uncond), float32, on both ranks of `group`; each rank runs one branch."""
    import torch.distributed as dist

    from lightx2v.runtime.parallel.sequence import all_gather_dim

    mine = dist.get_rank(group)
    if mine == 0:
        v = model_fn(x, t, cond, ctx).float()
    else:
        v = model_fn(x, t, uncond, replace(ctx, branch="uncond")).float()
    both = all_gather_dim(v[None], group, 0)  # [2, B, ...]: rank order = (cond, uncond)
    return both[0], both[1]
