"""The packed Ulysses exchange (lightx2v.runtime.parallel.ulysses) against the legacy one, 2 gloo ranks
on the CPU (one RankPool for the module): the same bits for the attention wrapper alone (batch 1 and 2,
fp32 and bf16, the reference and SDPA kernels, a padded sequence, a strided v as the fused q/k/v
projection gives it, 1 to 3 head stages) and for a tiny Wan DiT forward with fused q/k/v; and the
all_to_all_single calls per block: 2 for the legacy exchange, 2 x stages for the packed one, counted
by wrapping the functional collective both paths call."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lightx2v.runtime.parallel.ulysses import count_bytes, pack_out, pack_qkv, stage_bounds, unpack_qkv
from tests.runtime.parallel_harness import RankPool


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


@contextlib.contextmanager
def _counting_all_to_all():
    """Every fc.all_to_all_single call's element count, in order (both exchanges look it up per call)."""
    import torch.distributed._functional_collectives as fc

    real, calls = fc.all_to_all_single, []

    def counted(t, *args, **kwargs):
        calls.append(t.numel())
        return real(t, *args, **kwargs)

    fc.all_to_all_single = counted
    try:
        yield calls
    finally:
        fc.all_to_all_single = real


def _wrapper_cases():
    import torch.distributed as dist

    from lightx2v.ops.attention import get_backend
    from lightx2v.runtime.parallel.sequence import SequenceParallelAttention, ShardInfo

    rank = dist.get_rank()
    got = []
    for B, H, D, dtype, kernel, pad in ((1, 6, 8, torch.float32, "reference", 0),
                                        (2, 6, 8, torch.float32, "torch_sdpa", 0),
                                        (1, 4, 16, torch.bfloat16, "torch_sdpa", 3),
                                        (2, 2, 8, torch.float32, "torch_sdpa", 1)):
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own tokens
        Ll = 5
        qkv = torch.randn(B, Ll, 3 * H * D, generator=g).to(dtype)  # as the fused projection: v is a strided view
        q, k, v = (t.unflatten(-1, (H, D)) for t in qkv.chunk(3, dim=-1))
        shard = ShardInfo(valid=2 * Ll - pad if pad else None)
        wrap = SequenceParallelAttention(get_backend(kernel), shard, ulysses_group=dist.group.WORLD)
        wrap.exchange = "legacy"
        ref = wrap(q, k, v)
        wrap.exchange = "packed"
        for stages in (1, 2, 3):
            wrap.stages = stages
            out = wrap(q, k, v)
            got.append(((B, H, dtype, kernel, pad, stages), out.shape == ref.shape and torch.equal(out, ref),
                        float((out.float() - ref.float()).abs().max())))
    return got


def test_packed_wrapper_equals_legacy_bit_for_bit(ranks):
    for rank, cases in enumerate(ranks.run(_wrapper_cases)):
        bad = [(case, diff) for case, equal, diff in cases if not equal]
        assert not bad, f"rank {rank}: {bad}"
        assert len(cases) == 12


def _dit_forwards():
    import dataclasses

    from lightx2v.config import ParallelConfig
    from lightx2v.models.wan.dit import WanModel
    from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
    from lightx2v.runtime.fuse import fuse_qkv
    from lightx2v.runtime.parallel import init_parallel
    from lightx2v.runtime.parallel.sequence import apply_sequence_parallel, remove_sequence_parallel
    from lightx2v.runtime.parallel.ulysses import set_ulysses_exchange

    cfg = dataclasses.replace(tiny_dit_config(), num_heads=8)  # 4 heads per rank: 1 to 4 stages
    m = randomize_(WanModel(cfg)).eval()
    fused = fuse_qkv(m)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 6, 6, generator=g)  # 27 tokens: padded to 28 over 2 ranks
    t, ctx = torch.tensor([900.0, 500.0]), torch.randn(2, 20, 32, generator=g)
    res = {"fused": len(fused), "layers": cfg.num_layers}
    with torch.no_grad():
        res["one"] = m(x, t, ctx)
        apply_sequence_parallel(m, init_parallel(ParallelConfig(ulysses=2), torch.device("cpu")))
        for name, exchange, stages in (("legacy", "legacy", 2), ("packed1", "packed", 1), ("packed2", "packed", 2),
                                       ("packed4", "packed", 4)):
            assert set_ulysses_exchange(m, exchange, stages) == cfg.num_layers
            with _counting_all_to_all() as calls:
                res[name] = (m(x, t, ctx), list(calls))
        remove_sequence_parallel(m)
    return res


def test_packed_dit_forward_equals_legacy_and_counts_all_to_alls(ranks):
    for res in ranks.run(_dit_forwards):
        assert res["fused"] > 0  # q/k/v fused: the wrapper got a strided v
        legacy, legacy_calls = res["legacy"]
        torch.testing.assert_close(legacy, res["one"], atol=1e-5, rtol=1e-5)  # the reference path is right
        layers = res["layers"]
        assert len(legacy_calls) == 2 * layers  # q/k/v packed + the output, per block
        for stages in (1, 2, 4):
            out, calls = res[f"packed{stages}"]
            assert torch.equal(out, legacy), stages
            assert len(calls) == 2 * stages * layers, (stages, calls)
            # the same elements on the wire per block, only cut into more messages
            assert sum(calls) == sum(legacy_calls), (calls, legacy_calls)


def test_stage_bounds_and_byte_count():
    assert stage_bounds(20, 2) == [(0, 10), (10, 20)]
    assert stage_bounds(5, 2) == [(0, 2), (2, 5)]
    assert stage_bounds(1, 2) == [(0, 1)]  # never an empty stage
    assert stage_bounds(4, 0) == [(0, 4)]
    # Wan2.1-14B 480P on 2 ranks: 16380 tokens x 40 heads x 128 per rank, bf16
    c = count_bytes(1, 16380, 40, 128, 2)
    x = 16380 * 5120 * 2
    assert c == {"sent": 2 * x, "copied_legacy": 11 * x, "copied_packed": 4 * x}


def test_the_attention_reads_the_received_buffer_and_the_output_is_sent_in_place():
    recv = torch.randn(2 * 5 * 1 * 3 * 2 * 8)  # [n 2, Ll 5, B 1, 3, hs 2, D 8], as it arrives
    q, k, v = unpack_qkv(recv, 2, 5, 1, 2, 8)
    assert q.shape == k.shape == v.shape == (1, 10, 2, 8) and q.stride(-1) == 1
    assert {t.untyped_storage().data_ptr() for t in (q, k, v)} == {recv.untyped_storage().data_ptr()}  # no copy
    assert torch.equal(k[0, 7], recv.view(2, 5, 1, 3, 2, 8)[1, 2, 0, 1])  # token 7 = rank 1's token 2
    out = torch.randn(1, 10, 2, 8)  # B 1, contiguous: already the send buffer
    assert pack_out(out, 2).data_ptr() == out.data_ptr()
    out2 = torch.randn(2, 10, 2, 8)  # B 2: one copy, chunk j = rank j's tokens
    sent = pack_out(out2, 2)
    assert sent.data_ptr() != out2.data_ptr() and torch.equal(sent[1, 0], out2[0, 5:])
    qkv = torch.randn(1, 5, 3 * 4 * 8)  # H 4 over n 2, heads [1, 2) of each rank's group of 2
    q, k, v = (t.unflatten(-1, (4, 8)) for t in qkv.chunk(3, dim=-1))
    send = pack_qkv(q, k, v, 2, 1, 2)
    assert send.shape == (2, 5, 1, 3, 1, 8) and torch.equal(send[1, :, 0, 2, 0], v[0, :, 3])


def test_unknown_exchange_is_refused():
    from torch import nn

    from lightx2v.errors import InputError
    from lightx2v.runtime.parallel.ulysses import set_ulysses_exchange

    with pytest.raises(InputError, match="Ulysses exchange 'fast'; expected one of packed, legacy"):
        set_ulysses_exchange(nn.Linear(2, 2), "fast")
    with pytest.raises(InputError, match="Ulysses stages 0; expected an integer >= 1"):
        set_ulysses_exchange(nn.Linear(2, 2), "packed", 0)
