"""Starts tests/runtime/parallel_worker.py as 2 ranks with torchrun's environment (gloo on the CPU)."""

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

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).parents[2]
TOL = 1e-5  # fp32: the ranks' output against one process's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    """torchrun's variables for one rank; one thread each (2 ranks on a small shared CPU)."""
    return dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                TRITON_INTERPRET="1", PYTHONPATH=str(REPO))


def launch_workers(root: Path, spec: dict, timeout: float = 300,
                   world: int = 2) -> tuple[Path, list[tuple[int, str]], float]:
    """Run `world` ranks on `spec` (parallel_worker.main's); (out dir, [(returncode, stderr)] per rank, seconds)."""
    (root / "spec.json").write_text(json.dumps(spec))
    out = root / "out"
    out.mkdir()
    port = free_port()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(root / "spec.json"), str(out)],
                              env=rank_env(rank, world, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for rank in range(world)]
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the {world}-rank launch hung ({timeout:.0f} s)")
        results.append((p.returncode, err))
    return out, results, time.perf_counter() - t0


def check_case(launch, name: str) -> None:
    """Both ranks' outputs of case `name` equal the one-process run's (and the per-rank stats add up)."""
    out, results, _ = launch
    world = len(results)
    if not all((out / f"{name}.{r}.pt").exists() for r in range(world)):
        pytest.fail(f"case {name} did not finish; rank stderr:\n" + "\n".join(e[-3000:] for _, e in results))
    ref = torch.load(out / f"{name}.ref.pt", weights_only=False)
    got = [torch.load(out / f"{name}.{r}.pt", weights_only=False) for r in range(world)]
    assert ref["out"].abs().max() > 0.1  # a real output, not zeros
    for r, g in enumerate(got):
        if g["out"].shape != ref["out"].shape:  # output_type "np": rank 1 keeps its latents (test below)
            assert r == 1 and name == "ulysses_frames", (name, r, g["out"].shape)
            continue
        err = float((g["out"] - ref["out"]).abs().max())
        assert err <= TOL, f"{name}: rank {r} differs from one process by {err:.2e}"
    assert any(line.startswith("parallel: rank") for line in got[0]["log"]), got[0]["log"]
    # stats are per rank: under CFG parallel each rank made one branch's forwards, in a sequence group every
    # rank all of its branch's: the ranks' sum x cfg / world is the one process's count
    cfg = 2 if name.startswith(("cfg", "wan22_cfg")) else 1
    for key in ("model_calls", "model_calls_skipped"):
        counts = [g["stats"].get(key, 0) for g in got]
        assert len(set(counts[: world // cfg])) == 1 and sum(counts) * cfg == world * ref["stats"].get(key, 0), \
            (key, counts, ref["stats"])
    if name.endswith(("firstblock", "teacache", "taylorseer")) or name == "cfg_ulysses":
        assert ref["stats"]["model_calls_skipped"] > 0  # the cache did skip (and the same forwards on every rank)
    assert all(len(g["tokens"]) == 1 for g in got)
    whole = ref["out"].shape[-1] * ref["out"].shape[-2] * ref["out"].shape[-3] // 4 if ref["out"].ndim == 5 else None
    sp = world // cfg if "ulysses" in name or "ring" in name else 1
    if whole is not None:  # each rank's blocks saw its share of the (padded) tokens
        assert [g["tokens"][0] for g in got] == [-(-whole // sp)] * world, ([g["tokens"] for g in got], whole)
