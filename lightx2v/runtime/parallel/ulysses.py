"""Ulysses' all-to-alls with the fewest copies, pipelined over head groups (the "packed" exchange).

Used by `SequenceParallelAttention` (lightx2v.runtime.parallel.sequence) for a Ulysses group of n
ranks; its "legacy" exchange (torch.stack / chunk / cat around each all_to_all_single) is kept there
as the reference. Both give the same bits: the packed one moves the same numbers to the same places,
and attention is computed head by head.

The layouts (B batch, Ll this rank's tokens, H heads, h = H / n, hs the heads of one stage, D head dim):

    send  [n, Ll, B, 3, hs, D]   written once from q, k, v (any strides): chunk j (dim 0) goes to rank j
    recv  [n, Ll, B, 3, hs, D]   chunk i came from rank i: its tokens. Viewed as [B, n*Ll, 3, hs, D]
                                 (dims 0 and 1 merge: no copy), q, k, v are its [:, :, 0|1|2] views,
                                 token i*Ll + l, last dim contiguous: the attention reads them in place
    out   [B, n*Ll, hs, D]       the attention's output; as [n, B, Ll, hs, D] it is already the send
                                 buffer when B == 1 and the kernel wrote it contiguous (else one copy)
    back  [n, B, Ll, hs, D]      chunk i: head group i's output for my tokens, copied once into the
                                 result [B, Ll, n, h, D] = [B, Ll, H, D]

Per self-attention that is 3X + (0 or X) + X bytes copied (X: one of q, k, v on this rank) against
the legacy exchange's 9X + 2X (stack q/k/v, stack the chunks, cat; stack, cat on the way back).

Overlap: the heads are cut into `stages` groups (2 by default, fewer when h is smaller). Every
stage's q/k/v all-to-all is issued before the first attention; each stage's output all-to-all is
issued right after its attention. A functional collective returns at once and is waited for only
where its result is read, and NCCL runs a group's collectives in issue order on its own stream, so
stage s+1's inbound transfer runs during stage s's attention and stage s's outbound one during stage
s+1's: with 2 stages half of the bytes are hidden behind attention (docs/parallel.md). Calls per
self-attention: 2 x stages all_to_all_single (the legacy exchange: 2).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

EXCHANGES = ("packed", "legacy")

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


def stage_bounds(h: int, stages: int) -> list[tuple[int, int]]:
    """[a, b) head ranges (within one rank's h heads) of each stage: `stages` near-equal parts, at most h."""
    s = max(1, min(stages, h))
    return [(i * h // s, (i + 1) * h // s) for i in range(s)]


def pack_qkv(q: Tensor, k: Tensor, v: Tensor, n: int, a: int, b: int) -> Tensor:
    """q, k, v [B, Ll, H, D] (any strides) -> the send buffer [n, Ll, B, 3, b - a, D]: chunk j holds
    heads [j*h + a, j*h + b) of the three (h = H / n), one pass over the data."""
    B, Ll, H, D = q.shape
    send = q.new_empty(n, Ll, B, 3, b - a, D)
    for i, t in enumerate((q, k, v)):
        send[:, :, :, i].copy_(t.unflatten(2, (n, H // n))[:, :, :, a:b].permute(2, 1, 0, 3, 4))
    return send


def unpack_qkv(recv: Tensor, n: int, Ll: int, B: int, hs: int, D: int) -> tuple[Tensor, Tensor, Tensor]:
    """The received buffer (flat, [n, Ll, B, 3, hs, D]) -> q, k, v [B, n*Ll, hs, D]: views, no copy."""
    both = recv.view(n * Ll, B, 3, hs, D).permute(1, 0, 2, 3, 4)  # [B, L, 3, hs, D]
    q, k, v = both.unbind(2)
    return q, k, v


def pack_out(out: Tensor, n: int) -> Tensor:
    """The attention output [B, n*Ll, hs, D] -> [n, B, Ll, hs, D] contiguous (a view when B == 1 and
    `out` is contiguous: .contiguous() copies only when the layout needs it)."""
    return out.unflatten(1, (n, out.shape[1] // n)).transpose(0, 1).contiguous()


def exchange(send: Tensor, group) -> Tensor:
    """Issue one all_to_all_single of `send` (equal chunks along dim 0); returns without waiting (a
    functional collective: fc.wait_tensor where the result is read). Looked up on the module at
    every call, so a test can count the calls."""
    import torch.distributed._functional_collectives as fc

    return fc.all_to_all_single(send.flatten(), None, None, group)


def _wait(t: Tensor) -> Tensor:
    import torch.distributed._functional_collectives as fc

    return fc.wait_tensor(t)


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, group, n: int, attend: Attend, stages: int = 2) -> Tensor:
    """q, k, v [B, Ll, H, D] (this rank's tokens, all heads) -> [B, Ll, H, D]: each stage's heads
    all-to-all'd to [B, n*Ll, hs, D], `attend`ed over the whole sequence, and all-to-all'd back."""
    B, Ll, H, D = q.shape
    h = H // n
    bounds = stage_bounds(h, stages)
    # every stage on the wire before the first attention: stage s+1 travels while stage s is attended
    inbound = [exchange(pack_qkv(q, k, v, n, a, b), group) for a, b in bounds]
    outbound = []
    for (a, b), recv in zip(bounds, inbound):
        qs, ks, vs = unpack_qkv(_wait(recv), n, Ll, B, b - a, D)
        outbound.append(exchange(pack_out(attend(qs, ks, vs), n), group))  # travels during the next stage
    result = None
    for (a, b), recv in zip(bounds, outbound):
        back = _wait(recv).view(n, B, Ll, b - a, D)  # chunk i: head group i's heads [a, b) of my tokens
        if result is None:  # [B, Ll, n, h, D]: head i*h + c is head c of group i, as the projection expects
            result = back.new_empty(B, Ll, n, h, D)
        result[:, :, :, a:b].copy_(back.permute(1, 2, 0, 3, 4))
    return result.view(B, Ll, H, D)


def set_ulysses_exchange(model: nn.Module, exchange: str = "packed", stages: int | None = None) -> int:
    """Switch every sequence-parallel attention of `model` to the "packed" (default) or "legacy"
    exchange, optionally with `stages` head groups (packed only); returns how many were switched."""
    from lightx2v.errors import InputError
    from lightx2v.runtime.parallel.sequence import SequenceParallelAttention

    if exchange not in EXCHANGES:
        raise InputError(f"Ulysses exchange {exchange!r}; expected one of {', '.join(EXCHANGES)}", field="exchange")
    if stages is not None and stages < 1:
        raise InputError(f"Ulysses stages {stages}; expected an integer >= 1", field="stages")
    n = 0
    for module in model.modules():
        backend = getattr(module, "attn_backend", None)
        if isinstance(backend, SequenceParallelAttention):
            backend.exchange = exchange
            if stages is not None:
                backend.stages = stages
            n += 1
    return n


def count_bytes(B: int, Ll: int, H: int, D: int, n: int, itemsize: int = 2) -> dict[str, int]:
    """Bytes one rank sends and copies for one self-attention of a Ulysses group of n (the docs' count)."""
    x = B * Ll * H * D * itemsize  # one of q, k, v on this rank
    return {"sent": 4 * x * (n - 1) // n, "copied_legacy": 11 * x, "copied_packed": 4 * x + (0 if B == 1 else x)}

