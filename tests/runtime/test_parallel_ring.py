"""Ring attention (lightx2v.runtime.parallel.ring): the block kernels against the fp32 math kernel;
the ring over 2 gloo ranks (started once for the module) against attention over the whole sequence;
a group of one; the refusal of unequal lengths."""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import InputError
from lightx2v.runtime.parallel.ring import BLOCK_KERNELS, block_attention, ring_attention
from tests.runtime.parallel_harness import RankPool


def _qkv(b: int, length: int, h: int, d: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, length, h, d, generator=g).to(dtype) for _ in range(3)]


def _reference(q, k, v):
    """Softmax attention in float64 over the whole sequence: [B, L, H, D]."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())


def _reference_lse(q, k):
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.logsumexp(s, -1)


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


# ---------------------------------------------------------------- block kernels, one process


def _runnable(name: str) -> bool:
    return name in ("math", "cpu_flash") or torch.cuda.is_available()


def _fa3_on_gpu() -> bool:
    from lightx2v.ops.attention import get_backend

    return torch.cuda.is_available() and get_backend("flash_attn3").available(torch.device("cuda"), torch.bfloat16) is None


@pytest.mark.parametrize("name", sorted(set(BLOCK_KERNELS) - {"fa3"}))  # fa3 (half only): the tests below
@pytest.mark.parametrize("d", [13, 64])
def test_block_kernel_gives_the_output_and_lse_of_the_math_kernel(name, d):
    if not _runnable(name):
        pytest.skip(f"{name} needs CUDA")
    device = "cuda" if name.startswith("cuda") else "cpu"
    q, k, v = (t.to(device) for t in _qkv(2, 7, 3, d))
    k, v = k[:, :5], v[:, :5]  # Lk != Lq: the LSE is per query
    out, lse = block_attention(q, k, v, kernel=name)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 3, 7) and lse.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), _reference(q, k, v).cpu(), rtol=0, atol=2e-5)
    torch.testing.assert_close(lse.double().cpu(), _reference_lse(q, k).cpu(), rtol=0, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels")
@pytest.mark.parametrize("name", ["cuda_flash", "cuda_efficient"])
def test_cuda_kernels_in_bf16_follow_the_math_kernel(name):
    q, k, v = (t.cuda() for t in _qkv(1, 40, 2, 72, dtype=torch.bfloat16))
    out, lse = block_attention(q, k, v, kernel=name)
    want, want_lse = block_attention(q, k, v, kernel="math")
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=2e-2)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-2)


def test_the_fa3_block_kernel_hands_fa3_the_layout_and_takes_its_lse(monkeypatch):
    """A stand-in flash_attn_interface (the real one needs Hopper): what the ring passes and takes back."""
    import sys
    import types

    from lightx2v.runtime.parallel import ring

    seen = {}

    def flash_attn_func(q, k, v, softmax_scale=None, return_attn_probs=False):
        seen.update(shape=q.shape, scale=softmax_scale, probs=return_attn_probs)
        out, lse = ring._math(q, k, v, softmax_scale)
        return (out, lse) if return_attn_probs else out

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    q, k, v = _qkv(2, 7, 3, 16)
    out, lse = block_attention(q, k[:, :5], v[:, :5], kernel="fa3")
    assert seen == dict(shape=(2, 7, 3, 16), scale=16 ** -0.5, probs=True)  # [B, L, H, D], no transposes
    torch.testing.assert_close(out.double(), _reference(q, k[:, :5], v[:, :5]), rtol=0, atol=2e-5)
    torch.testing.assert_close(lse.double(), _reference_lse(q, k[:, :5]), rtol=0, atol=2e-5)
    # auto takes it on a GPU where FA3 runs, for half dtypes and head dims up to 128
    monkeypatch.setattr(ring, "_fa3_runs", lambda device, dtype: True)
    cuda_like = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16, shape=(1, 8, 2, 128))
    assert ring._auto_kernel(cuda_like) == "fa3"
    assert ring._auto_kernel(types.SimpleNamespace(**{**vars(cuda_like), "shape": (1, 8, 2, 256)})) == "cuda_flash"
    assert ring._auto_kernel(types.SimpleNamespace(**{**vars(cuda_like), "dtype": torch.float32})) == "cuda_efficient"
    assert ring._auto_kernel(types.SimpleNamespace(**{**vars(cuda_like), "shape": (1, 8, 2, 72)})) == "fa3"
    assert ring._auto_kernel(types.SimpleNamespace(**{**vars(cuda_like), "shape": (1, 8, 2, 13)})) == "cuda_flash"
    monkeypatch.setattr(ring, "_fa3_runs", lambda device, dtype: False)
    assert ring._auto_kernel(cuda_like) == "cuda_flash"
    # a build that does not return the LSE is one clear error
    monkeypatch.setitem(sys.modules, "flash_attn_interface",
                        types.SimpleNamespace(flash_attn_func=lambda q, k, v, **kw: q))
    with pytest.raises(InputError, match="does not return the log-sum-exp"):
        block_attention(q, k, v, kernel="fa3")


@pytest.mark.skipif(not _fa3_on_gpu(), reason="needs a Hopper GPU with FlashAttention-3")
def test_fa3_block_kernel_on_the_gpu_follows_the_math_kernel():
    q, k, v = (t.cuda() for t in _qkv(2, 300, 4, 128, dtype=torch.bfloat16))
    out, lse = block_attention(q, k[:, :257], v[:, :257], kernel="fa3")
    want, want_lse = block_attention(q, k[:, :257], v[:, :257], kernel="math")
    assert lse.shape == (2, 4, 300) and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=2e-2)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-2)
    assert block_attention(q, k, v)[0].shape == q.shape  # auto: fa3 here


def test_a_group_of_one_is_plain_attention_and_unknown_kernels_are_refused():
    q, k, v = _qkv(1, 9, 2, 16)
    out = ring_attention(q, k, v, group=None)  # torch.distributed not initialised here
    torch.testing.assert_close(out.double(), _reference(q, k, v), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="unknown block kernel 'nope'"):
        ring_attention(q, k, v, group=None, inner="nope")


# ---------------------------------------------------------------- the ring over 2 gloo ranks


def _ring_local(shape: tuple[int, int, int, int], kernel: str, dtype=torch.float32, group_ranks=None):
    """On each rank: its shard of a seeded full q, k, v (L = 2 * shape[1]) through the ring."""
    import torch.distributed as dist

    b, length, h, d = shape
    rank, world = dist.get_rank(), dist.get_world_size()
    q, k, v = _qkv(b, length * world, h, d, seed=1, dtype=dtype)
    shard = slice(rank * length, (rank + 1) * length)
    group = dist.new_group(group_ranks) if group_ranks else None
    return ring_attention(q[:, shard], k[:, shard], v[:, shard], group, inner=kernel)


@pytest.mark.parametrize("shape, kernel", [
    ((1, 5, 1, 13), "math"),
    ((1, 5, 1, 13), "auto"),        # cpu_flash
    ((2, 8, 3, 7), "cpu_flash"),
    ((2, 6, 2, 64), "auto"),
    ((1, 4, 4, 128), "math"),
    ((2, 3, 2, 128), "auto"),
])
def test_ring_over_two_ranks_equals_attention_over_the_whole_sequence(ranks, shape, kernel):
    outs = ranks.run(_ring_local, shape, kernel)
    b, length, h, d = shape
    q, k, v = _qkv(b, 2 * length, h, d, seed=1)
    got = torch.cat(outs, dim=1)
    assert got.shape == q.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(q, k, v), rtol=0, atol=1e-5)
    # not the attention of each shard alone
    assert not torch.allclose(outs[0].double(), _reference(q[:, :length], k[:, :length], v[:, :length]), atol=1e-3)


def test_ring_in_bf16_over_an_explicit_group(ranks):
    outs = ranks.run(_ring_local, (1, 6, 2, 32), "auto", torch.bfloat16, [0, 1])
    q, k, v = _qkv(1, 12, 2, 32, seed=1, dtype=torch.bfloat16)
    got = torch.cat(outs, dim=1)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), _reference(q, k, v), rtol=0, atol=2e-2)


def _ring_padded(length: int, valid: int):
    """The first `valid` tokens of a seeded sequence, padded with garbage to 2 * length, through the ring."""
    import torch.distributed as dist

    rank = dist.get_rank()
    q, k, v = _qkv(2, 2 * length, 3, 16, seed=3)
    q, k, v = (torch.cat([t[:, :valid], 1e3 * torch.ones_like(t[:, valid:])], dim=1) for t in (q, k, v))
    shard = slice(rank * length, (rank + 1) * length)
    return ring_attention(q[:, shard], k[:, shard], v[:, shard], None, valid=valid)


@pytest.mark.parametrize("valid", [7, 4, 10])  # rank 1 holds 2 real tokens; none; all 5 (no padding)
def test_padded_keys_past_valid_are_left_out(ranks, valid):
    got = torch.cat(ranks.run(_ring_padded, 5, valid), dim=1)[:, :valid]
    q, k, v = (t[:, :valid] for t in _qkv(2, 10, 3, 16, seed=3))
    torch.testing.assert_close(got.double(), _reference(q, k, v), rtol=0, atol=1e-5)


def test_valid_out_of_range_is_refused():
    q, k, v = _qkv(1, 4, 1, 8)
    with pytest.raises(InputError, match=r"valid 5 tokens; expected 1 \.\. 4"):
        ring_attention(q, k, v, None, valid=5)
    torch.testing.assert_close(ring_attention(q, k, v, None, valid=3).double(), _reference(q, k[:, :3], v[:, :3]),
                               rtol=0, atol=1e-5)


def _ring_in_own_group():
    """Each rank in a group of one: plain attention on its own tokens (no transfer)."""
    import torch.distributed as dist

    groups = [dist.new_group([0]), dist.new_group([1])]  # every rank creates every group
    rank = dist.get_rank()
    q, k, v = _qkv(1, 6, 2, 8, seed=rank)
    return ring_attention(q, k, v, groups[rank]), _reference(q, k, v)


def test_a_group_of_one_inside_two_ranks_is_plain_attention(ranks):
    for got, want in ranks.run(_ring_in_own_group):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def _ring_unequal():
    import torch.distributed as dist

    q, k, v = _qkv(1, 4 + dist.get_rank(), 2, 8)
    return ring_attention(q, k, v, None)


def _ring_bad_v_on_rank_1():
    import torch.distributed as dist

    q, k, v = _qkv(1, 4, 2, 8)
    return ring_attention(q, k, v[..., :4] if dist.get_rank() == 1 else v, None)


def test_unequal_lengths_are_refused_on_every_rank(ranks):
    with pytest.raises(InputError, match=r"same number of tokens \(pad the sequence to a multiple of the ring size 2\); "
                                         r"got .*\[\(1, 4, 2, 8, 4\), \(1, 5, 2, 8, 5\)\]"):
        ranks.run(_ring_unequal)
    # a wrong shape on one rank only: refused on both, not a hang of rank 0
    with pytest.raises(InputError, match=r"on rank\(s\) \[1\] q, k, v are not"):
        ranks.run(_ring_bad_v_on_rank_1)
    # the refusal came after the all_gather on both ranks: the group still works
    assert len(ranks.run(_ring_local, (1, 2, 1, 4), "math")) == 2
