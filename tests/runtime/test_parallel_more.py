"""Four ranks (test_parallel.py has two): LightX2V's 8-GPU layout halved, CFG parallel x Ulysses 2,
with a feature cache (first-block, deciding on the gathered residual) and compile (aot_eager); and,
when lightx2v.runtime.parallel.ring is in the build, CFG x ring 2 and Ulysses 2 x ring 2. All on a
token count the ranks must pad (27 tokens). Each against the one-process run within 1e-5 (fp32,
tiny Wan2.1), in one 4-rank launch."""

from __future__ import annotations

import pytest
import torch

from tests.runtime.parallel_launch import check_case, launch_workers


def _has_ring() -> bool:
    try:
        import lightx2v.runtime.parallel.ring  # noqa: F401
    except ImportError:
        return False
    return True


RING = ("cfg_ring", "ulysses_ring")


@pytest.fixture(scope="module")
def launch4(tmp_path_factory):
    from lightx2v.models.wan.tiny import write_official_checkpoint

    root = tmp_path_factory.mktemp("parallel-4")
    cases = ("cfg_ulysses",) + (RING if _has_ring() else ())
    return launch_workers(root, {"wan21": str(write_official_checkpoint(root / "wan21")), "cases": cases}, world=4)


def test_cfg_x_ulysses_with_cache_and_compile_equal_one(launch4):
    check_case(launch4, "cfg_ulysses")
    out, _, _ = launch4
    logs = [torch.load(out / f"cfg_ulysses.{r}.pt", weights_only=False)["log"] for r in range(4)]
    assert all(any(line.startswith("compile: dit") for line in log) for log in logs)
    assert [next(line for line in log if line.startswith("parallel: rank"))[len("parallel: "):] for log in logs] == [
        f"rank {r} of 4 on cpu: cfg 2, ulysses 2" for r in range(4)]


@pytest.mark.parametrize("name", RING)
def test_ring_equals_one(launch4, name):
    if not _has_ring():
        pytest.skip("lightx2v.runtime.parallel.ring is not in this build (branch ringvae)")
    check_case(launch4, name)
