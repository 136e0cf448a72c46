"""The feature cache's runner: one object in place of a DiT's block stack, deciding per step and CFG branch.

Design. A DiT declares two attributes (lightx2v.models.wan.dit.WanModel): `block_runner`, called by
forward as `runner(model, x, **kw)` in place of `run_blocks(x, **kw)` (kw: e, e0, kv, rope), and
`step_context`, the loop's StepContext of the call being made, set by the pipeline's model function.
The cache step of the engine (lightx2v.runtime.cache.apply_cache) installs a `CachedBlocks` there;
the model's forward, its blocks and the loop are untouched, and a compiled block stays compiled
(the runner is plain Python around `run_blocks`, so dynamo never sees it).

Per call the runner:
  1. finds the branches in the batch: one ("cond" / "uncond"), or, with batched CFG ("cfg"), two:
     the batch is [cond, uncond] halves (lightx2v.pipelines.base.Guidance);
  2. asks the method for each branch's decision from that branch's own state (`BranchState`);
     a branch with nothing stored always runs, and a threshold of 0 always runs;
  3. decides jointly: the block stack runs when any branch wants it (the batch is one forward; a
     branch that wanted to skip is then computed, and its state records a computed step), else
     every branch reuses what it stored (the method's `reuse`: a residual, or a forecast);
  4. counts: `calls` (the block stack ran), `skipped` (it did not), and the seconds spent deciding.
State lives per DiT (each expert of a two-expert model has its own runner) and per branch, and is
dropped by `reset()`, which the pipeline calls at the start and the end of every generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

BRANCHES = ("cond", "uncond")  # the order of the halves of a batched-CFG batch


@dataclass
class BranchState:
    """One CFG branch's memory (of one DiT) between steps: `stored` (what reuse reads: the block
    stack's residual [B, L, C] fp32, or the Taylor factors), the method's scalars in `vars`, the
    first step it saw (`origin`), and the (step, ran) decisions of this generation."""

    branch: str
    stored: Any = None
    vars: dict = field(default_factory=dict)
    origin: Optional[int] = None
    decisions: list = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.stored is not None

    def reset(self) -> None:
        self.stored, self.origin = None, None
        self.vars.clear()
        self.decisions.clear()


@dataclass(frozen=True)
class Decision:
    """A branch's wish for this step (`run`) and what its state becomes (`update`, applied by commit)."""

    run: bool
    update: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BranchInputs:
    """What a decision may read, for one branch: e [b, 1 | L, C] (time embedding), e0 [b, 1 | L, 6, C]
    (time projection), first [b, L, C] (the first block's residual: firstblock only)."""

    e: Tensor
    e0: Tensor
    first: Optional[Tensor] = None


class CacheMethod:
    """A decision rule. Subclasses define `decide` (and `store` / `reuse` when they keep more than the
    residual); `describe()` is the engine log's line; `off` means every forward runs."""

    name = ""
    # the rule reads a number off the device (rel_l1's .item()): the runner lets the device finish the
    # work already queued before it starts the decision's clock, so `decide_s` is the decision's own cost
    # (that wait would happen in the rule's sync anyway; the host then launches the rest, as before)
    host_sync = False

    @property
    def off(self) -> bool:
        return False

    def describe(self) -> str:
        return self.name

    def decide(self, state: BranchState, step: int, num_steps: int, inputs: BranchInputs) -> Decision:
        raise NotImplementedError

    def commit(self, state: BranchState, decision: Decision, ran: bool) -> None:
        state.vars.update(decision.update)

    def prepare(self, model, x: Tensor, kw: dict) -> tuple[Tensor, dict, Optional[Tensor]]:
        """(input of the cached stack, its run_blocks kw, the first block's residual or None)."""
        return x, kw, None

    def store(self, state: BranchState, step: int, x_in: Tensor, x_out: Tensor) -> None:
        state.stored = x_out - x_in  # [b, L, C] fp32: the residual the stack added

    def reuse(self, state: BranchState, step: int, x_in: Tensor) -> Tensor:
        return x_in + state.stored


def split(t: Tensor, n: int) -> Sequence[Tensor]:
    """The n branch halves of a batch along dim 0 ([cond, uncond] for batched CFG)."""
    return (t,) if n == 1 else t.chunk(n)


class CachedBlocks:
    """A DiT's `block_runner`: the block stack, run or reused per step and CFG branch by `method`."""

    def __init__(self, method: CacheMethod) -> None:
        self.method = method
        self.states: dict[str, BranchState] = {}
        self.calls = 0          # block-stack runs
        self.skipped = 0        # calls answered from the cache
        self.decide_s = 0.0     # host seconds spent deciding (a rule's own device read included, not the queued work)

    def reset(self) -> None:
        """Forget every branch's state and the counts: a generation never sees another's residuals."""
        for s in self.states.values():
            s.reset()
        self.states.clear()
        self.calls = self.skipped = 0
        self.decide_s = 0.0

    def state(self, branch: str) -> BranchState:
        if branch not in self.states:
            self.states[branch] = BranchState(branch)
        return self.states[branch]

    def __call__(self, model, x: Tensor, **kw: Any) -> Tensor:
        # x: [B, L, C] fp32, the embedded tokens; returns the block stack's output [B, L, C] fp32
        ctx = model.step_context
        if ctx is None:  # called outside a denoising loop: nothing to decide from
            return model.run_blocks(x, **kw)
        names = BRANCHES if ctx.branch == "cfg" else (ctx.branch,)
        n = len(names)
        states = [self.state(b) for b in names]
        x_in, run_kw, first = self.method.prepare(model, x, kw)
        if self.method.host_sync and x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        for s in states:
            if s.origin is None:
                s.origin = ctx.step
        firsts = split(first, n) if first is not None else (None,) * n
        views = [BranchInputs(e, e0, f) for e, e0, f in zip(split(kw["e"], n), split(kw["e0"], n), firsts)]
        decisions = [self.method.decide(s, ctx.step, ctx.num_steps, v) for s, v in zip(states, views)]
        run = self.method.off or any(d.run or not s.ready for d, s in zip(decisions, states))
        for s, d in zip(states, decisions):
            self.method.commit(s, d, run)
            s.decisions.append((ctx.step, run))
        self.decide_s += time.perf_counter() - t0
        if run:
            self.calls += 1
            out = model.run_blocks(x_in, **run_kw)
            for s, xi, oi in zip(states, split(x_in, n), split(out, n)):
                self.method.store(s, ctx.step, xi, oi)
            return out
        self.skipped += 1
        outs = [self.method.reuse(s, ctx.step, xi) for s, xi in zip(states, split(x_in, n))]
        return outs[0] if n == 1 else torch.cat(outs)


def rel_l1(a: Tensor, ref: Tensor) -> float:
    """mean |a - ref| / mean |ref|, on the host (one device sync)."""
    return float(((a - ref).abs().mean() / ref.abs().mean()).item())
