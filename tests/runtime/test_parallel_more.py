"""Several ranks, continued (test_parallel.py has the basics): compile (aot_eager) with Ulysses, Wan2.2
A14B's expert switch with per-expert scales under CFG parallel and under Ulysses, Wan2.2 TI2V image-to-video's per-token
timesteps under Ulysses, ring attention (when lightx2v.runtime.parallel.ring is in the build), each
against the one-process run within 1e-5 in one 2-rank launch; and the CLI under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.runtime.parallel_launch import REPO, check_case, free_port, launch_workers


def _has_ring() -> bool:
    try:
        import lightx2v.runtime.parallel.ring  # noqa: F401
    except ImportError:
        return False
    return True


CASES = ("ulysses_compile", "wan22_cfg_experts", "wan22_ulysses_experts", "wan22_ti2v_image_ulysses")
RING = ("ring",)


@pytest.fixture(scope="module")
def launch(tmp_path_factory, wan22_t2v_dirs, wan22_ti2v_dirs):
    from lightx2v.models.wan.tiny import write_official_checkpoint

    root = tmp_path_factory.mktemp("parallel-more")
    cases = CASES + (RING + ("ring_padded",) if _has_ring() else ())
    return launch_workers(root, {"wan21": str(write_official_checkpoint(root / "wan21")), "cases": cases,
                                 "wan22_t2v": str(wan22_t2v_dirs[1]), "wan22_ti2v": str(wan22_ti2v_dirs[1])})


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one(launch, name):
    check_case(launch, name)


@pytest.mark.parametrize("name", RING)
def test_ring_equals_one(launch, name):
    if not _has_ring():
        pytest.skip("lightx2v.runtime.parallel.ring is not in this build (branch ringvae)")
    check_case(launch, name)


def test_ring_refuses_a_padded_token_count(launch):
    if not _has_ring():
        pytest.skip("lightx2v.runtime.parallel.ring is not in this build (branch ringvae)")
    out, _, _ = launch
    got = torch.load(out / "ring_padded.0.pt", weights_only=False)
    assert "ring attention needs the token count (27) to be a multiple of ulysses x ring (2)" in got["error"]


def _torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "lightx2v", "generate", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)


def test_cli_under_torchrun_ulysses_writes_once(tmp_path):
    from lightx2v.models.wan.tiny import write_official_checkpoint

    model = write_official_checkpoint(tmp_path / "wan21")
    run = _torchrun(["--model-path", str(model), "--prompt", "a fox", "--size", "32x32", "--frames", "5",
                     "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--seed", "3", "--ulysses", "2",
                     "--output", str(tmp_path / "out.mp4")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert run.stdout.count(str(tmp_path / "out.mp4")) == 1  # rank 0 prints the path; rank 1 stays quiet
    assert run.stderr.count("lightx2v: Wan2.1 t2v") == 1  # one summary line, rank 0's
    assert "ulysses 2 ranks" in run.stderr


def test_cli_degree_without_torchrun(tmp_path, capsys, monkeypatch):
    from lightx2v.cli.main import main
    from lightx2v.models.wan.tiny import write_official_checkpoint

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = write_official_checkpoint(tmp_path / "wan21")
    code = main(["generate", "--model-path", str(model), "--prompt", "a fox", "--device", "cpu", "--ulysses", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "need 2 processes: launch with torchrun --nproc-per-node 2 -m lightx2v generate" in err
