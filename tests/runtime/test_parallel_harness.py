"""The multi-rank test helper (tests/runtime/parallel_harness.py): results in rank order, a rank's
error raised in the parent, a rank stuck in a collective stopped by the timeout."""

from __future__ import annotations

import pytest

from lightx2v.errors import InputError
from tests.runtime.parallel_harness import RankPool, run_on_ranks


def _rank_and_sum(x: int):
    import torch
    import torch.distributed as dist

    t = torch.tensor([dist.get_rank() + x])
    dist.all_reduce(t)
    return dist.get_rank(), int(t)


def _fail_on(rank: int):
    import torch.distributed as dist

    if dist.get_rank() >= rank:
        raise InputError(f"bad input on rank {dist.get_rank()}")
    return "fine"


def _stuck():
    import torch.distributed as dist

    if dist.get_rank() == 0:
        dist.barrier()  # rank 1 never joins
    return "done"


def test_results_errors_and_timeouts():
    assert run_on_ranks(_rank_and_sum, 2, 10) == [(0, 21), (1, 21)]
    with RankPool(2, timeout=3) as pool:
        with pytest.raises(InputError, match="bad input on rank 0") as err:
            pool.run(_fail_on, 0)  # both fail: the lowest rank's error
        assert "raised on rank 0 of 2" in "".join(getattr(err.value, "__notes__", []))
        with pytest.raises(InputError, match="bad input on rank 1"):
            pool.run(_fail_on, 1)
        assert pool.run(_fail_on, 2) == ["fine", "fine"]  # the pool survives an error
        with pytest.raises(TimeoutError, match=r"_stuck on 2 ranks: no result within 3 s; results from ranks \[1\]"):
            pool.run(_stuck)
        with pytest.raises(RuntimeError, match="closed"):
            pool.run(_fail_on, 2)
