"""Sequence parallelism (Ulysses, ring, both) on a DiT's block stack, from what the model declares.

A DiT declares (principle 3; lightx2v.models.wan.dit.WanModel):
    _sp_plan = {"x": 1, "e0": 1, "rope": 0}   run_blocks' inputs cut along their token dim (a dim of
                                             size 1 is per sample and is not cut: e0 [B, 1, 6, C])
    _sp_attention = ("self",)                the attention roles whose keys span the whole sequence
    _sp_joint = "after" | "before"            (joint-attention models: HunyuanVideo-1.5, Qwen-Image) the
                                             attention's q, k, v hold the sharded tokens followed
                                             ("after") or preceded ("before") by tokens every rank holds
                                             whole (the text)
and the transform reads nothing else: no forward is copied. A plan value "index" (not a dim) marks an
int run_blocks input that is a token position (Qwen-Image's `split`, where the condition images
start): each rank gets it relative to its share, clamped to [0, share]. A value (dim, "name") cuts
along dim after the first kw["name"].shape[1] entries, which stay whole (Qwen-Image's RoPE table:
the text's rows, then the image tokens'; one table, so the unsharded run keeps its one copy).

Two pieces, installed by `apply_sequence_parallel`:
  `SequenceShardedBlocks`  in place of the model's `run_blocks` (an instance attribute over the
      class method, so forward and a feature cache, lightx2v.runtime.cache, both call it: the cache
      sits above it and sees whole tensors, its decision is the same on every rank because its
      inputs are): pads the L tokens to Lp, a multiple of the group size N (zeros; they are never
      attended: see below), gives this rank its Lp / N tokens of every declared input, runs the
      class's run_blocks on them and all-gathers the outputs (dim 1), cutting the padding off.
  `SequenceParallelAttention`  on every declared self-attention's `attn_backend`: Ulysses' all-to-all
      (local tokens, all heads -> all tokens of the ring chunk, heads / U), the inner backend (or
      `ring_attention` across the ring group: lightx2v.runtime.parallel.ring), the all-to-all back.
      Padded tokens sit at the end of the sequence: after the all-to-all they are the last Lp - L
      rows, cut from q, k, v before the inner backend and zero-filled after; with a ring, the ring
      leaves the keys past L out (`valid`). Either way the attention of the real tokens is exact.
Joint attention (xDiT's USP "joint" scheme): the text tokens are whole on every rank; around the
all-to-all of the sharded tokens each rank takes its heads' slice of the text's q, k, v, attends over
[all image tokens, text] (in the model's order) with heads / U, sends the image rows back and
all-gathers the text rows over the heads, so every rank holds the whole text stream again (the
text's own MLP then runs alike on every rank). Only the attentions inside the repeated blocks
(`_repeated_blocks`, what run_blocks runs) are wrapped: a text refiner before the stack is not.
With a ring (alone or around Ulysses) the image tokens' K/V of every ring chunk go round the ring and
the text's K/V, whole on every rank, are attended once per rank, locally, merged by the log-sum-exp
(`ring_joint_attention`, lightx2v.runtime.parallel.ring); the text queries attend the same keys, their
parts merged in a fixed order, so every ring rank holds the same bits of the text stream.
Cross-attention stays local (its keys are the text, whole on every rank). The blocks are unchanged;
compiled blocks trace the all-to-all (functional collectives), the ring exchange is left out of the
graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import InputError


@dataclass
class ShardInfo:
    """What the attention wrappers of one DiT need to know of the current call: `valid`, the real
    token count of the whole sequence (the rest is padding). State with a name (principle 8)."""

    valid: Optional[int] = None
    local: Optional[int] = None  # this rank's sharded token count (joint models: the rest is replicated)

    def reset(self) -> None:
        self.valid = None
        self.local = None


def _group_size(group) -> int:
    import torch.distributed as dist

    return 1 if group is None else dist.get_world_size(group)


def _all_to_all(x: Tensor, group, scatter_dim: int, gather_dim: int) -> Tensor:
    """Cut x into n chunks along scatter_dim, send chunk j to rank j of `group`, and join what is
    received along gather_dim in rank order (n = the group's size)."""
    import torch.distributed._functional_collectives as fc

    n = _group_size(group)
    send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()  # [n, ...chunk]
    recv = fc.wait_tensor(fc.all_to_all_single(send.flatten(), None, None, group))
    return torch.cat(recv.view(send.shape).unbind(0), dim=gather_dim)


def all_gather_dim(x: Tensor, group, dim: int) -> Tensor:
    """Every rank's x joined along `dim`, in rank order."""
    import torch.distributed._functional_collectives as fc

    gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor  # (the newer name first)
    return fc.wait_tensor(gather(x.contiguous(), gather_dim=dim, group=group))


class SequenceParallelAttention:
    """An `attn_backend` for sequence-sharded tokens: q, k, v [B, L_local, H, D] -> [B, L_local, H, D].

    Ulysses (group of U ranks): all-to-all to [B, U * L_local, H / U, D], attention over those
    tokens, all-to-all back. Ring (group of R ranks): `ring_attention` over the R chunks. Both: the
    Ulysses all-to-all inside, the ring across (each ring chunk is one Ulysses group's tokens)."""

    # the Ulysses exchange (lightx2v.runtime.parallel.ulysses): "packed" (one copy in, one out, the
    # heads in `stages` groups so the all-to-alls overlap attention) or "legacy" (the reference);
    # the same bits either way. Switch: set_ulysses_exchange(model, "legacy")
    exchange: str = "packed"
    stages: int = 2

    def __init__(self, inner: Callable[[Tensor, Tensor, Tensor], Tensor], shard: ShardInfo,
                 ulysses_group=None, ring_group=None, joint: Optional[str] = None) -> None:
        self.inner = inner
        self.shard = shard
        self.ulysses_group = ulysses_group
        self.ring_group = ring_group
        self.joint = joint
        self.name = f"{getattr(inner, 'name', type(inner).__name__)} (sequence parallel)"

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.joint is not None and self.shard.local is not None and (
                q.shape[1] != self.shard.local or k.shape[1] != self.shard.local):
            return self._joint(q, k, v)
        g = self.ulysses_group
        if g is None:
            return self._attend(q, k, v)
        if self.exchange == "legacy":
            return self._legacy(q, k, v)
        from lightx2v.runtime.parallel.ulysses import ulysses_attention

        return ulysses_attention(q, k, v, g, _group_size(g), self._attend, self.stages)

    def _legacy(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # the reference exchange: a copy in and out of contiguous buffers around each all-to-all
        g = self.ulysses_group  # [3, B, Ll, H, D] -> [3, B, U * Ll, H / U, D]: one exchange for q, k and v
        q, k, v = _all_to_all(torch.stack([q, k, v]), g, scatter_dim=3, gather_dim=2).unbind(0)
        out = self._attend(q, k, v)
        return _all_to_all(out, g, scatter_dim=1, gather_dim=2)  # [B, U * Ll, H / U, D] -> [B, Ll, H, D]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q, k, v: [B, L, h, D], this Ulysses group's tokens (all of them) and heads
        if self.ring_group is not None:  # the ring chunks, in ring-rank order, are the (padded) sequence
            return _ring(q, k, v, self.ring_group, self.shard.valid)
        return self._local(q, k, v)

    def _joint(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [B, Ls + Lq, H, D], k / v [B, Ls + Lk, H, D]: Ls sharded tokens (this rank's share) and the
        replicated ones (whole on every rank; Lq may differ from Lk: a sample's valid text keys) in the
        model's order -> [B, Ls + Lq, H, D]."""
        import torch.distributed as dist

        g, n = self.ulysses_group, self.shard.local
        size, me = _group_size(g), (0 if g is None else dist.get_rank(g))

        def parts(t: Tensor) -> tuple[Tensor, Tensor]:  # (sharded [B, Ls, H, D], replicated [B, Lr, H, D])
            rep = t.shape[1] - n
            return (t[:, :n], t[:, n:]) if self.joint == "after" else (t[:, rep:], t[:, :rep])

        (qs, qr), (ks, kr), (vs, vr) = parts(q), parts(k), parts(v)
        h = q.shape[2] // size  # this rank's heads: [me * h, (me + 1) * h), the all-to-all's chunk
        if g is not None:  # [3, B, Ls, H, D] -> [3, B, U * Ls, H / U, D]
            qs, ks, vs = _all_to_all(torch.stack([qs, ks, vs]), g, scatter_dim=3, gather_dim=2).unbind(0)
        qr, kr, vr = (t[:, :, me * h:(me + 1) * h] for t in (qr, kr, vr))
        if self.ring_group is not None:  # this ring chunk's image tokens; the text once per rank, locally
            out_s, out_r = _ring_joint(qs, ks, vs, qr, kr, vr, self.ring_group, self.shard.valid)
        else:
            out_s, out_r = self._joint_local(qs, ks, vs, qr, kr, vr)
        if g is not None:  # [B, U * Ls, h, D] -> [B, Ls, H, D]; the text rows: every rank's heads
            out_s = _all_to_all(out_s, g, scatter_dim=1, gather_dim=2)
            out_r = all_gather_dim(out_r, g, 2)
        return torch.cat([out_s, out_r], 1) if self.joint == "after" else torch.cat([out_r, out_s], 1)

    def _joint_local(self, qs: Tensor, ks: Tensor, vs: Tensor, qr: Tensor, kr: Tensor,
                     vr: Tensor) -> tuple[Tensor, Tensor]:
        """The inner backend over [all image tokens (the padding cut), text] in the model's order: qs, ks, vs
        [B, Lp, h, D] (the whole padded image sequence), qr [B, Lq, h, D], kr / vr [B, Lk, h, D] ->
        (image out [B, Lp, h, D], the padded rows zeros; text out [B, Lq, h, D])."""
        total, valid = qs.shape[1], self.shard.valid
        valid = total if valid is None else min(valid, total)
        order = (lambda s, r: torch.cat([s[:, :valid], r], 1)) if self.joint == "after" else \
            (lambda s, r: torch.cat([r, s[:, :valid]], 1))
        out = self.inner(order(qs, qr), order(ks, kr), order(vs, vr))  # [B, valid + Lq, h, D]
        lq = qr.shape[1]
        out_s, out_r = (out[:, :valid], out[:, valid:]) if self.joint == "after" else (out[:, lq:], out[:, :lq])
        return F.pad(out_s, (0, 0, 0, 0, 0, total - valid)), out_r  # the padded rows: zeros, cut after the gather

    def _local(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q, k, v: [B, Lp, h, D], the whole (padded) sequence: the padding (the last rows) is cut
        valid, total = self.shard.valid, q.shape[1]
        if valid is None or valid >= total:
            return self.inner(q, k, v)
        out = self.inner(q[:, :valid], k[:, :valid], v[:, :valid])  # [B, valid, h, D]
        return F.pad(out, (0, 0, 0, 0, 0, total - valid))


@torch.compiler.disable
def _ring_joint(q: Tensor, k: Tensor, v: Tensor, qt: Tensor, kt: Tensor, vt: Tensor, group,
                valid: Optional[int]) -> tuple[Tensor, Tensor]:
    # joint attention with the image tokens round the ring, the text (whole on every rank) attended once
    # per rank; the text's output the same bits on every rank (lightx2v.runtime.parallel.ring)
    from lightx2v.runtime.parallel.ring import ring_joint_attention

    return ring_joint_attention(q, k, v, qt, kt, vt, group, valid=valid)


@torch.compiler.disable
def _ring(q: Tensor, k: Tensor, v: Tensor, group, valid: Optional[int]) -> Tensor:
    # the ring's point-to-point exchange is not traced by dynamo: a compiled block breaks here.
    # `valid`: keys past it are padding, left out by the ring; the shapes are equal on every rank by
    # construction (SequenceShardedBlocks cuts equal shares), so the ring's per-call check is skipped
    from lightx2v.runtime.parallel.ring import ring_attention

    return ring_attention(q, k, v, group, check_lengths=False, valid=valid)


class SequenceShardedBlocks:
    """A DiT's `run_blocks` over this rank's share of the tokens; the output gathered whole.

    Plain Python (not an nn.Module: it holds the model, which must not become its own child)."""

    def __init__(self, model: nn.Module, plan: dict[str, int], group, rank: int, size: int, shard: ShardInfo) -> None:
        self.model = model
        self.plan = dict(plan)
        self.group, self.rank, self.size = group, rank, size
        self.shard = shard

    def index(self, i: int, padded: int) -> int:
        """A token position of the whole sequence, relative to this rank's share (clamped to it)."""
        n = padded // self.size
        return min(max(int(i) - self.rank * n, 0), n)

    def cut(self, t: Tensor, dim: int, padded: int) -> Tensor:
        """This rank's share of t along `dim` (padded with zeros to `padded` first); size 1: whole."""
        if t.shape[dim] == 1:
            return t
        if t.shape[dim] < padded:
            pad = [0, 0] * (t.ndim - 1 - dim) + [0, padded - t.shape[dim]]
            t = F.pad(t, pad)
        n = padded // self.size
        return t.narrow(dim, self.rank * n, n)

    def __call__(self, x: Tensor, **kw: Any) -> Tensor:
        # x: [B, L, C] fp32 (the whole sequence) -> [B, L, C] fp32
        length = x.shape[1]
        padded = math.ceil(length / self.size) * self.size
        local = {k: (self.cut(v, self.plan[k], padded) if isinstance(self.plan.get(k), int) and isinstance(v, Tensor)
                     else v) for k, v in kw.items()}
        for k, how in self.plan.items():
            if how == "index" and k in kw:
                local[k] = self.index(kw[k], padded)
            elif isinstance(how, tuple) and k in kw:  # (dim, name): the first kw[name].shape[1] rows whole
                dim, lead = how[0], kw[how[1]].shape[1]
                t = kw[k]
                local[k] = torch.cat([t.narrow(dim, 0, lead),
                                      self.cut(t.narrow(dim, lead, t.shape[dim] - lead), dim, padded)], dim)
        self.shard.valid = length
        self.shard.local = padded // self.size
        try:
            out = type(self.model).run_blocks(self.model, self.cut(x, self.plan["x"], padded), **local)
        finally:
            self.shard.reset()
        return all_gather_dim(out, self.group, self.plan["x"]).narrow(self.plan["x"], 0, length)


def apply_sequence_parallel(model: nn.Module, state) -> int:
    """Install the sharded block stack and the sequence-parallel attention on `model` (a DiT that
    declares `_sp_plan` and `_sp_attention`); returns the number of attention modules wrapped."""
    from lightx2v.ops.attention import attention_role

    plan = getattr(type(model), "_sp_plan", None)
    if not plan or "x" not in plan:
        raise InputError(f"{type(model).__name__} declares no sequence-parallel plan (_sp_plan); it cannot run "
                         "with ulysses or ring", field="parallel")
    roles = getattr(type(model), "_sp_attention", ("self",))
    joint = getattr(type(model), "_sp_joint", None)
    shard = ShardInfo()
    n = 0
    stacks = [getattr(model, name) for name in getattr(type(model), "_repeated_blocks", ())] or [model]
    for module in (m for stack in stacks for m in stack.modules()):  # the attentions run_blocks runs
        if hasattr(module, "attn_backend") and attention_role(module) in roles:
            module.attn_backend = SequenceParallelAttention(module.attn_backend, shard, state.ulysses_group,
                                                            state.ring_group, joint)
            n += 1
    model.run_blocks = SequenceShardedBlocks(model, plan, state.sp_group, state.sp_rank, state.sp, shard)
    return n


def remove_sequence_parallel(model: nn.Module) -> None:
    """Undo `apply_sequence_parallel`: the class's run_blocks and the inner attention backends."""
    if isinstance(model.__dict__.get("run_blocks"), SequenceShardedBlocks):
        del model.__dict__["run_blocks"]
    for module in model.modules():
        if isinstance(getattr(module, "attn_backend", None), SequenceParallelAttention):
            module.attn_backend = module.attn_backend.inner
