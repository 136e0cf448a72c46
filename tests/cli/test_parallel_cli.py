"""The CLI on several ranks: one real `torchrun --nproc-per-node 2 -m lightx2v generate --ulysses 2` on
a tiny checkpoint (rank 0 writes the file and reports, once; the video equals the one-process CLI's),
and a degree without torchrun (one line, exit 2, before loading)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.runtime.parallel_launch import REPO, free_port

ARGS = ["--prompt", "a fox", "--size", "32x32", "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32",
        "--seed", "3"]


def _decoded(path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        w, h = next(reader)["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    finally:
        reader.close()


def test_torchrun_ulysses_writes_once_and_equals_one_process(tmp_path):
    from lightx2v.cli.main import main
    from lightx2v.models.wan.tiny import write_official_checkpoint

    model = str(write_official_checkpoint(tmp_path / "wan21"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "lightx2v", "generate", "--model-path", model, *ARGS,
           "--ulysses", "2", "--output", str(tmp_path / "two.mp4")]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(str(tmp_path / "two.mp4")) == 1  # rank 0 prints the path; rank 1 stays quiet
    assert run.stderr.count("lightx2v: Wan2.1 t2v") == 1 and "ulysses 2 ranks" in run.stderr  # one summary line
    assert main(["generate", "--model-path", model, *ARGS, "--quiet", "--output", str(tmp_path / "one.mp4")]) == 0
    two, one = _decoded(tmp_path / "two.mp4"), _decoded(tmp_path / "one.mp4")
    assert two.shape == one.shape == (5, 32, 32, 3)
    assert np.array_equal(two, one)  # the same frames in, the same encoder: the same video


def test_degree_without_torchrun(tmp_path, capsys, monkeypatch):
    from lightx2v.cli.main import main
    from lightx2v.models.wan.tiny import write_official_checkpoint

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = write_official_checkpoint(tmp_path / "wan21")
    code = main(["generate", "--model-path", str(model), "--prompt", "a fox", "--device", "cpu", "--ulysses", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "need 2 processes: launch with torchrun --nproc-per-node 2 -m lightx2v generate" in err
