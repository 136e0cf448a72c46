"""io/video.py: the ffmpeg child is stopped and reaped when the run stops, and an encoder that dies
is an error (never a truncated file that looks finished)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from lightx2v.io import atomic, video
from lightx2v.io.output import save
from lightx2v.io.video import EncoderError


def _frames(n=9):
    return np.random.default_rng(0).random((n, 32, 48, 3), dtype=np.float32)


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _pause_at(monkeypatch, point, action):
    seen = []

    def pause(where, **details):
        if where == point:
            seen.append(details["pid"])
            action(details["pid"])

    monkeypatch.setattr(video, "test_pause", pause)
    return seen


def test_an_interrupt_during_the_encode_kills_ffmpeg_and_removes_the_partial_file(tmp_path, monkeypatch):
    def interrupt(pid):
        assert os.getpgid(pid) != os.getpgid(0)  # its own process group: the terminal's Ctrl-C is not sent to it
        raise KeyboardInterrupt

    seen = _pause_at(monkeypatch, "save", interrupt)
    out = tmp_path / "v.mp4"
    with pytest.raises(KeyboardInterrupt) as e:
        save(_frames(), out, metadata={"seed": 1})
    assert seen and _gone(seen[0])  # killed and reaped, not left writing
    assert list(tmp_path.iterdir()) == []
    assert atomic.removed(e.value) == [f"the partial output {out}"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_encoder_that_dies_is_an_error_and_writes_nothing(tmp_path, monkeypatch, sig):
    # SIGTERM, not SIGINT: see tests/io/test_stream.py (SIGINT may be ignored in a background CI job)
    def kill(pid):  # ffmpeg finishes a valid, truncated file on SIGTERM and exits 255, at its next read of the pipe
        os.kill(pid, sig)
        if sig == signal.SIGKILL:  # (waiting for a handled SIGTERM before any frame is written could hang)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

    _pause_at(monkeypatch, "encoder-start", kill)
    out = tmp_path / "v.mp4"
    with pytest.raises(EncoderError, match=r"the video encoder \(ffmpeg\) (exited with status|was stopped by signal) "
                                           r".*nothing was written") as e:
        save(_frames(), out)
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_frames_are_checked(tmp_path):
    from lightx2v.errors import InputError

    with pytest.raises(InputError, match="needs even frame sizes"):
        save(np.zeros((3, 31, 48, 3), np.uint8), tmp_path / "v.mp4")
    with pytest.raises(InputError, match=r"frames must be \[F, H, W, 3\]"):
        save(np.zeros((3, 32, 48), np.uint8), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


def test_container_comment_stays_small():
    meta = {"prompt": "x" * 100_000, "seed": 3}
    text = video.container_comment(meta)
    assert len(text) <= video.COMMENT_LIMIT and '"truncated":true' in text and '"seed":3' in text
