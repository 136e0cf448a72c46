"""First-block cache (diffusers' FirstBlockCache, hooks/first_block_cache.py; ParaAttention's
first-block cache, and LightX2V's WanTransformerInferFirstBlock).

Rule, per CFG branch: the first block always runs; its residual r1 = block0(x) - x is compared with
the r1 the branch saw when it last ran the rest: mean|r1 - r1_prev| / mean|r1_prev|. Above the
threshold the remaining blocks run (and r1_prev := r1, with their residual stored); at or below it
they are skipped and their stored residual is added to block 0's output. Comparing with the last
*computed* step (diffusers' rule; LightX2V compares consecutive steps) bounds the drift the reused
residual can hide. Default threshold: diffusers' 0.05 (LightX2V's Wan config: 0.02 on its
consecutive-step rule). One device->host scalar per branch and call (a sync).
The split: block 0 through `run_blocks(blocks=slice(0, 1))`, then the rest from its output and from what
that call put in `carry` (a stack that carries a second stream, HunyuanVideo-1.5's text, hands it on there).
"""

from __future__ import annotations

from torch import Tensor

from lightx2v.runtime.cache.base import BranchInputs, BranchState, CacheMethod, Decision, rel_l1

DEFAULT_THRESHOLD = 0.05


class FirstBlockCache(CacheMethod):
    host_sync = True  # rel_l1 reads its number off the device
    name = "firstblock"

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)

    @property
    def off(self) -> bool:
        return self.threshold == 0

    def describe(self) -> str:
        return f"firstblock (threshold {self.threshold:g})"

    def prepare(self, model, x: Tensor, kw: dict) -> tuple[Tensor, dict, Tensor]:
        # block 0 now, through run_blocks (offload hooks and compiled blocks see an ordinary call).
        # The rest goes on from block 0's state: a stack that carries another stream from block to block
        # (HunyuanVideo-1.5's text) puts the kw that continue it in `carry` (a dict run_blocks fills when
        # given one); Wan's per-block K/V iterator is split, not listed, so each block's K/V is made when
        # its block runs
        first, rest = {**kw, "blocks": slice(0, 1), "carry": {}}, {**kw, "blocks": slice(1, None)}
        if "kv" in kw:
            kvs = iter(kw["kv"])
            first["kv"], rest["kv"] = [next(kvs)], kvs
        x1 = model.run_blocks(x, **first)
        return x1, {**rest, **first["carry"]}, x1 - x

    def decide(self, state: BranchState, step: int, num_steps: int, inputs: BranchInputs) -> Decision:
        previous = state.vars.get("previous")
        if previous is None:
            return Decision(True, {"first": inputs.first})
        return Decision(rel_l1(inputs.first, previous) > self.threshold, {"first": inputs.first})

    def commit(self, state: BranchState, decision: Decision, ran: bool) -> None:
        if ran:  # the reference residual moves only when the rest was computed
            state.vars["previous"] = decision.update["first"]
