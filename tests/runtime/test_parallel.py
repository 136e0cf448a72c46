"""Several ranks (lightx2v.runtime.parallel) on the CPU with gloo: 2 processes started once for the
module (tests/runtime/parallel_worker.py runs every case in that one launch), each case's output
against the one-process run within 1e-5 (fp32, tiny models): Ulysses 2 (a padded token count too),
CFG parallel, each with a feature cache, w8a8 quantization, compile, the step-distilled preset,
Wan2.2's expert switch (per-expert scales) and TI2V's per-token timesteps; then one rank failing
stops both with one message. The checks that need no second process (degrees, groups, config)
run in this process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightx2v.config import EngineConfig, ParallelConfig
from lightx2v.errors import InputError

WORKER = Path(__file__).with_name("parallel_worker.py")
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_ring() -> bool:
    try:
        import lightx2v.runtime.parallel.ring  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def launch(tmp_path_factory, wan22_t2v_dirs, wan22_ti2v_dirs):
    """Both ranks run every case; (out_dir, [(returncode, stderr)] per rank, seconds)."""
    from lightx2v.models.wan.tiny import write_official_checkpoint

    root = tmp_path_factory.mktemp("parallel")
    spec = {"wan21": str(write_official_checkpoint(root / "wan21")), "wan22_t2v": str(wan22_t2v_dirs[1]),
            "wan22_ti2v": str(wan22_ti2v_dirs[1]), "ring": _has_ring()}
    (root / "spec.json").write_text(json.dumps(spec))
    out = root / "out"
    out.mkdir()
    port = _free_port()
    procs = []
    t0 = time.perf_counter()
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", TRITON_INTERPRET="1",
                   PYTHONPATH=str(Path(__file__).parents[2]))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(root / "spec.json"), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-rank launch hung (300 s)")
        results.append((p.returncode, err))
    return out, results, time.perf_counter() - t0


def _cases():
    sys.path.insert(0, str(WORKER.parent))
    from parallel_worker import cases

    return [c[0] for c in cases({"ring": _has_ring()})]


@pytest.mark.parametrize("name", _cases())
def test_two_ranks_equal_one(launch, name):
    out, results, _ = launch
    if not (out / f"{name}.1.pt").exists():
        pytest.fail(f"case {name} did not finish; rank stderr:\n" + "\n".join(e[-3000:] for _, e in results))
    ref = torch.load(out / f"{name}.ref.pt", weights_only=False)
    got = [torch.load(out / f"{name}.{r}.pt", weights_only=False) for r in range(2)]
    assert ref["out"].abs().max() > 0.1  # a real output, not zeros
    for r, g in enumerate(got):
        err = float((g["out"] - ref["out"]).abs().max())
        assert err <= TOL, f"{name}: rank {r} differs from one process by {err:.2e}"
        assert g["stats"].get("model_calls_skipped") == ref["stats"].get("model_calls_skipped"), name
    assert any(line.startswith("parallel: rank") for line in got[0]["log"]), got[0]["log"]
    if "cache" in name or name.endswith(("firstblock", "teacache", "taylorseer")):
        assert ref["stats"]["model_calls_skipped"] > 0  # the cache did skip (the same forwards on every rank)


def test_only_rank_0_returns_frames(launch):
    out, _, _ = launch
    got = [torch.load(out / f"ulysses_frames.{r}.pt", weights_only=False) for r in range(2)]
    assert got[0]["out"].ndim == 4 and got[0]["out"].shape[-1] == 3  # frames [F, H, W, 3] on rank 0
    assert got[1]["out"].ndim == 5  # rank 1: its latents only, no decode, no path
    assert got[1]["path"] is None


def test_error_on_one_rank_stops_both_with_one_message(launch):
    out, results, seconds = launch
    assert all((out / f"done.{r}").exists() for r in range(2)), [e[-2000:] for _, e in results]
    codes = [c for c, _ in results]
    assert codes == [1, 1], codes
    text = "".join(e for _, e in results)
    assert text.count("lightx2v: error: rank 1 failed: RuntimeError: injected failure on rank 1") == 1, text[-3000:]
    assert "rank finished without the failure" not in text
    print(f"2-rank launch: {seconds:.1f} s")


# ---- in this process: no second rank needed


def test_config_checks_degrees():
    assert ParallelConfig(cfg_parallel=True, ulysses=2, ring=2).world == 8
    assert not ParallelConfig().enabled and ParallelConfig(vae_parallel=True).enabled
    with pytest.raises(InputError, match="ulysses must be an integer >= 1"):
        ParallelConfig(ulysses=0)
    with pytest.raises(InputError, match="cfg_parallel runs one CFG branch per rank"):
        EngineConfig(device="cpu", cfg_mode="batched", parallel=ParallelConfig(cfg_parallel=True))


def test_degree_without_torchrun_is_an_error(monkeypatch):
    from lightx2v.api import make_engine

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match=r"ulysses 2 .* need 2 processes: launch with torchrun"):
        make_engine(device="cpu", dtype="fp32", ulysses=2)


def test_world_mismatch_and_heads_before_loading(monkeypatch, tmp_path):
    from lightx2v.loading.detect import detect
    from lightx2v.models.wan.tiny import write_official_checkpoint
    from lightx2v.runtime.parallel import check_parallel

    mc = detect(write_official_checkpoint(tmp_path / "m"))  # 2 heads; configs only, no weight read
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match=r"= 2, but the launch has 4 processes"):
        check_parallel(mc, ParallelConfig(ulysses=2))
    with pytest.raises(InputError, match=r"ulysses 4 does not divide the model's 2 attention heads; possible: 1, 2$"):
        check_parallel(mc, ParallelConfig(ulysses=4))
    check_parallel(mc, ParallelConfig(cfg_parallel=True, ulysses=2))  # 2 x 2 = 4: fine


def test_rank_layout_ulysses_inside_ring_inside_cfg():
    from lightx2v.runtime.parallel.state import rank_groups

    g = rank_groups(cfg=2, ulysses=2, ring=2)
    assert g["sp"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert g["ulysses"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g["ring"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g["cfg"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
