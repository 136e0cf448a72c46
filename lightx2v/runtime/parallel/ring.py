"""Ring attention: exact attention over a sequence sharded across the ranks of a process group.

Design. Rank r of a group of N holds tokens [r*L, (r+1)*L) of q, k and v (`[B, L, H, D]`, the
layout of lightx2v.ops.attention; no mask, not causal). The K/V shards travel round the ring: at
step s a rank attends its q to the shard of rank (r - s) mod N while it sends the shard it holds to
rank r + 1 and receives the next one from rank r - 1 (one packed K/V message, `batch_isend_irecv`
started before the block's compute, so the transfer overlaps it). Each block gives its output and
the log-sum-exp of its scores (LSE, `[B, H, L]`); the partial outputs are merged in float32 with the
stable rule  lse = logaddexp(lse_a, lse_b),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse),
which is exact: the result is the softmax over all N*L keys, up to rounding.

Joint attention (HunyuanVideo-1.5, Qwen-Image: text and image tokens attended together):
`ring_joint_attention` passes the image K/V round the ring as above and attends the text K/V, which
every rank holds whole, once per rank, locally; one more LSE merge. The text queries (whole on every
rank too) attend the same keys, their parts merged in source order so that every rank gets the same
bits for the text stream (lightx2v.runtime.parallel.sequence carries it into the next block).

Every rank must hold the same number of tokens (the caller pads the sequence to a multiple of N);
`ring_attention` checks it (one small all_gather, `check_lengths=True`) and raises the same
InputError on every rank, instead of a hang in the transfer. Inference only: no autograd through
the ring.

The per-block kernel is `block_attention(q, k, v, scale, kernel)` -> (out, lse):
  "math"            fp32 reference: explicit scores, logsumexp, softmax @ v (any device)
  "cpu_flash"       aten::_scaled_dot_product_flash_attention_for_cpu (returns the LSE)
  "cuda_flash"      aten::_scaled_dot_product_flash_attention (fp16 / bf16; LSE [B, H, L])
  "cuda_efficient"  aten::_scaled_dot_product_efficient_attention (any float dtype; its LSE is
                    padded to a multiple of 32 along L and is sliced back)
  "fa3"             FlashAttention-3 (Hopper, when installed: `flash_attn_interface.flash_attn_func`
                    with return_attn_probs=True gives its LSE [B, H, L]); bf16 here (and fp16 where
                    the build has it), head dims <= 128 and multiples of 8 (the smallest builds stop there)
  "auto"            CUDA: fa3 where it runs (the lossless self-attention `auto` takes on Hopper: 706
                    against flash SDPA's 365 TOPS at Wan-14B shapes on an H200), else flash for
                    fp16/bf16, efficient otherwise; CPU: cpu_flash; else math.
The CUDA kernels get the head dim zero-padded to a multiple of 8 (zeros add nothing to q.k and give
zero output columns, which are dropped) with the scale of the real head dim.
tests/runtime/test_parallel_ring.py compares each kernel that can run with "math", and the ring
over 2 gloo ranks with attention over the whole sequence.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lightx2v.errors import InputError

__all__ = ["BLOCK_KERNELS", "block_attention", "ring_attention", "ring_joint_attention"]

# (q, k, v, scale) -> (out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32)
BlockKernel = Callable[[Tensor, Tensor, Tensor, float], "tuple[Tensor, Tensor]"]

_HALF = (torch.float16, torch.bfloat16)


def _math(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    # q: [B, Lq, H, D], k/v: [B, Lk, H, D]; scores [B, H, Lq, Lk] in float32
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    lse = torch.logsumexp(s, dim=-1)                       # [B, H, Lq]
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.float())
    return out.to(q.dtype), lse


def _cpu_flash(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2), lse.float()               # out [B, H, Lq, D] -> [B, Lq, H, D]


def _padded_head(x: Tensor, multiple: int = 8) -> Tensor:
    pad = -x.shape[-1] % multiple
    return F.pad(x, (0, pad)) if pad else x


def _cuda_flash(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    d = q.shape[-1]
    qh, kh, vh = (_padded_head(t).transpose(1, 2) for t in (q, k, v))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qh, kh, vh, scale=scale)[:2]
    return out.transpose(1, 2)[..., :d], lse.float()


def _cuda_efficient(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    d, lq = q.shape[-1], q.shape[1]
    qh, kh, vh = (_padded_head(t).transpose(1, 2) for t in (q, k, v))
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qh, kh, vh, None, True, scale=scale)[:2]
    return out.transpose(1, 2)[..., :d], lse[..., :lq].float()  # lse: [B, H, ceil32(Lq)]


def _fa3(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    from flash_attn_interface import flash_attn_func

    try:
        res = flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=True)
    except TypeError:  # early FA3 releases: no such argument, (out, lse) always
        res = flash_attn_func(q, k, v, softmax_scale=scale)
    if not isinstance(res, tuple):
        raise InputError("ring attention: this FlashAttention-3 build does not return the log-sum-exp")
    out, lse = res[0], res[1]
    return out, lse.float()                               # out [B, Lq, H, D], lse [B, H, Lq]


BLOCK_KERNELS: dict[str, BlockKernel] = {
    "math": _math, "cpu_flash": _cpu_flash, "cuda_flash": _cuda_flash, "cuda_efficient": _cuda_efficient,
    "fa3": _fa3,
}

@functools.lru_cache(maxsize=None)
def _fa3_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether FlashAttention-3 runs here (the attention registry's own check), asked once per device and dtype."""
    from lightx2v.ops.attention import get_backend

    return get_backend("flash_attn3").available(device, dtype) is None


def _auto_kernel(q: Tensor) -> str:
    if q.device.type == "cuda":
        if q.dtype in _HALF and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0 and _fa3_runs(q.device, q.dtype):
            return "fa3"
        return "cuda_flash" if q.dtype in _HALF and q.shape[-1] <= 256 else "cuda_efficient"
    return "cpu_flash" if q.device.type == "cpu" else "math"


def block_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                    kernel: str = "auto") -> tuple[Tensor, Tensor]:
    """Attention of one block and its log-sum-exp: q [B, Lq, H, D], k/v [B, Lk, H, D] ->
    (out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32). `kernel`: a name of BLOCK_KERNELS or "auto"."""
    name = _auto_kernel(q) if kernel == "auto" else kernel
    if name not in BLOCK_KERNELS:
        raise InputError(f"ring attention: unknown block kernel {kernel!r}; expected 'auto' or one of {sorted(BLOCK_KERNELS)}")
    return BLOCK_KERNELS[name](q, k, v, q.shape[-1] ** -0.5 if scale is None else scale)


def _group_size(group: dist.ProcessGroup | None) -> int:
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1  # no process group at all: plain attention
    return dist.get_world_size(group)


def _check_lengths(q: Tensor, k: Tensor, v: Tensor, group: dist.ProcessGroup | None, n: int) -> None:
    """Every rank holds q, k, v of the same shapes, k and v alike with q's B, H, D; else the same
    InputError on every rank (a rank that raised alone would leave the others in the ring)."""
    ok = k.shape == v.shape and q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:]
    device = torch.device("cpu") if dist.get_backend(group) == "gloo" else q.device
    mine = torch.tensor([int(ok), *q.shape, k.shape[1]], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(every, mine, group=group)
    shapes = [tuple(t.tolist()) for t in every]
    bad = [r for r, sh in enumerate(shapes) if not sh[0]]
    if bad:
        raise InputError(f"ring attention: on rank(s) {bad} q, k, v are not [B, L, H, D] with one B, H, D and k, v "
                         f"of one shape (this rank: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")
    if len(set(shapes)) > 1:
        raise InputError("ring attention: every rank must hold the same number of tokens (pad the sequence to a "
                         f"multiple of the ring size {n}); got q [B, L, H, D] + k/v length per rank: "
                         f"{[sh[1:] for sh in shapes]}")


def _accumulate(acc: Tensor | None, lse_acc: Tensor | None, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    # acc / out: [B, L, H, D]; lse_acc: [B, L, H, 1] float32 (None before the first block);
    # lse: [B, H, L] from the kernel
    lse = lse.float().transpose(1, 2).unsqueeze(-1)
    if acc is None:
        return out.float(), lse
    new = torch.logaddexp(lse_acc, lse)
    acc = acc * torch.exp(lse_acc - new) + out.float() * torch.exp(lse - new)
    return acc, new


def _kernel_of(inner: BlockKernel | str | None) -> BlockKernel:
    if callable(inner):
        return inner
    name = inner or "auto"
    return lambda q_, k_, v_, s_: block_attention(q_, k_, v_, s_, name)


def _ring_pass(k: Tensor, v: Tensor, group: dist.ProcessGroup | None, n: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Every rank's K/V shard in turn, (source rank, k, v), this rank's own first: at step s the shard
    of rank (rank - s) mod n, while it goes on to rank + 1 and the next comes from rank - 1 (started
    before the caller computes on it, so the transfer overlaps that). The yielded views are valid until
    the next step; the caller must run the generator to its end (every rank sends at every step)."""
    rank = dist.get_rank(group)
    send_to = dist.get_global_rank(group or dist.group.WORLD, (rank + 1) % n)
    recv_from = dist.get_global_rank(group or dist.group.WORLD, (rank - 1) % n)
    cur = torch.stack((k, v))      # [2, B, Lk, H, D]: one message per step
    nxt = torch.empty_like(cur)    # the one being received; the two swap after each step
    for step in range(n):
        reqs = []
        if step + 1 < n:  # start the next transfer before this block's compute, so they overlap
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, cur, send_to, group),
                                           dist.P2POp(dist.irecv, nxt, recv_from, group)])
        yield (rank - step) % n, cur[0], cur[1]
        for req in reqs:
            req.wait()
        cur, nxt = nxt, cur


def _kept(valid: int | None, src: int, length: int) -> int:
    # the real keys of source rank src's shard [src * length, (src + 1) * length) when the whole
    # sequence has `valid` real tokens (the rest: padding at the end)
    return length if valid is None else max(0, min(length, valid - src * length))


def _check_valid(valid: int | None, n: int, length: int) -> None:
    if valid is not None and not 0 < valid <= n * length:
        raise InputError(f"ring attention: valid {valid} tokens; expected 1 .. {n * length} (the ring's "
                         f"{n} x {length} tokens)")


def ring_attention(q: Tensor, k: Tensor, v: Tensor, group: dist.ProcessGroup | None,
                   inner: BlockKernel | str | None = None, *, scale: float | None = None,
                   check_lengths: bool = True, valid: int | None = None) -> Tensor:
    """Exact attention of the local queries over the whole sequence sharded across `group`.

    q, k, v: [B, L, H, D] on this rank, its shard in rank order (rank r of the group holds tokens
    [r*L, (r+1)*L)); L must be the same on every rank (the caller pads), checked when
    `check_lengths` (one small all_gather per call; a caller that checked once may pass False).
    `inner`: the block kernel, a name of BLOCK_KERNELS, "auto" / None, or a callable
    (q, k, v, scale) -> (out [B, Lq, H, D], lse [B, H, Lq] float32). `group` None: the default group,
    or plain attention when torch.distributed is not initialised. `valid`: the real token count of the
    whole sequence when the caller padded it at the end: keys at positions >= valid are left out (a
    shard of them is cut, not masked); the padded queries' rows are computed and are the caller's to
    drop. Returns [B, L, H, D] in q's dtype. Every rank of the group must call it (a collective)."""
    kernel = _kernel_of(inner)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n = _group_size(group)
    _check_valid(valid, n, k.shape[1])
    if n == 1:
        keep = k.shape[1] if valid is None else valid
        return kernel(q, k[:, :keep], v[:, :keep], scale)[0].to(q.dtype)
    if check_lengths:
        _check_lengths(q, k, v, group, n)
    acc = lse_acc = None
    for src, ks, vs in _ring_pass(k, v, group, n):
        keep = _kept(valid, src, ks.shape[1])
        if keep > 0:
            acc, lse_acc = _accumulate(acc, lse_acc, *kernel(q, ks[:, :keep], vs[:, :keep], scale))
    return acc.to(q.dtype)


def ring_joint_attention(q: Tensor, k: Tensor, v: Tensor, q_txt: Tensor, k_txt: Tensor, v_txt: Tensor,
                         group: dist.ProcessGroup | None, inner: BlockKernel | str | None = None, *,
                         scale: float | None = None, valid: int | None = None) -> tuple[Tensor, Tensor]:
    """Joint attention with the image tokens around the ring and the text tokens whole on every rank.

    q, k, v: [B, L, H, D] this rank's share of the image tokens (rank r of the group: [r*L, (r+1)*L),
    the same L on every rank; `valid` as ring_attention's); q_txt [B, Lq, H, D], k_txt / v_txt
    [B, Lk, H, D]: the text, the same on every rank (Lk may be less than Lq: the valid text keys).
    Every query, image or text, attends every real image key (the shards passed round the ring) and the
    text keys once (this rank's own copy, attended locally); the parts are merged by their log-sum-exp.
    Returns (image out [B, L, H, D], text out [B, Lq, H, D]) in q's dtype. The text's output is the
    same, bit for bit, on every rank: its parts are computed by separate kernel calls (shapes equal on
    every rank) and merged in source order (text, then ranks 0..n-1), not in ring order, so every rank
    carries the same text stream into the next block. Every rank of the group must call it."""
    kernel = _kernel_of(inner)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n = _group_size(group)
    _check_valid(valid, n, k.shape[1])
    acc = lse_acc = txt = lse_txt = None
    if k_txt.shape[1] > 0:
        acc, lse_acc = _accumulate(None, None, *kernel(q, k_txt, v_txt, scale))
        txt, lse_txt = _accumulate(None, None, *kernel(q_txt, k_txt, v_txt, scale))
    parts: dict[int, tuple[Tensor, Tensor]] = {}  # the text's part from each source rank's shard
    shards = [(0, k, v)] if n == 1 else _ring_pass(k, v, group, n)
    for src, ks, vs in shards:
        keep = _kept(valid, src, ks.shape[1])
        if keep > 0:
            acc, lse_acc = _accumulate(acc, lse_acc, *kernel(q, ks[:, :keep], vs[:, :keep], scale))
            parts[src] = kernel(q_txt, ks[:, :keep], vs[:, :keep], scale)
    for src in sorted(parts):
        txt, lse_txt = _accumulate(txt, lse_txt, *parts.pop(src))
    return acc.to(q.dtype), txt.to(q_txt.dtype)
