"""io/stream.py: a streamed mp4 is the non-streamed one, frame for frame; abort, an error inside
the stream, or an encoder that dies leave no file and no ffmpeg process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightx2v.io import stream as stream_mod
from lightx2v.io import video
from lightx2v.io.output import save, sidecar_path
from lightx2v.io.stream import VideoStream
from lightx2v.io.video import EncoderError, read_metadata

META = {"prompt": "a fox", "seed": 7}


def _frames(n=9, h=32, w=48):
    return (np.random.default_rng(0).random((n, h, w, 3)) * 255).astype(np.uint8)


def _decoded(path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        w, h = meta["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    finally:
        reader.close()


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _spy(monkeypatch) -> list:
    procs = []
    real = stream_mod.start_encoder

    def start(cmd, log):
        procs.append(real(cmd, log))
        return procs[-1]

    monkeypatch.setattr(stream_mod, "start_encoder", start)
    return procs


def test_a_streamed_mp4_equals_the_saved_one_frame_for_frame(tmp_path):
    frames = _frames()
    whole = save(frames, tmp_path / "whole.mp4", metadata=META)
    s = VideoStream(tmp_path / "streamed.mp4", metadata=META, num_frames=len(frames)).open(48, 32)
    for chunk in (frames[:1], torch.from_numpy(frames[1:5]), frames[5:]):  # numpy or torch, chunks of 1 and 4
        s.write(chunk)
    out = s.close()
    assert out == tmp_path / "streamed.mp4" and s.frames_written == 9
    # the same encoder, arguments and input: the same stream (x264 is deterministic)
    np.testing.assert_array_equal(_decoded(out), _decoded(whole))
    assert read_metadata(out) == META and json.loads(sidecar_path(out).read_text()) == META
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "streamed.mp4.json", "whole.mp4", "whole.mp4.json"]


def test_a_folder_gets_the_default_name_and_an_existing_file_is_replaced_with_a_warning(tmp_path):
    s = VideoStream(f"{tmp_path}/out/", default_stem="run").open(48, 32)
    s.write(_frames(1))
    assert s.close() == tmp_path / "out" / "run.mp4"
    s = VideoStream(tmp_path / "out" / "run.mp4").open(48, 32)
    s.write(_frames(1))
    with pytest.warns(UserWarning, match="overwrote the existing file"):
        s.close()


def test_abort_kills_ffmpeg_and_leaves_no_file(tmp_path, monkeypatch):
    procs = _spy(monkeypatch)
    s = VideoStream(tmp_path / "v.mp4").open(48, 32)
    s.write(_frames(4))
    s.abort()
    s.abort()  # idempotent
    assert procs[0].returncode is not None and _gone(procs[0].pid)
    assert list(tmp_path.iterdir()) == []


def test_an_error_inside_the_stream_removes_the_partial_file(tmp_path, monkeypatch):
    from lightx2v.io import atomic

    procs = _spy(monkeypatch)
    out = tmp_path / "v.mp4"
    with pytest.raises(ZeroDivisionError) as e:
        with VideoStream(out).open(48, 32) as s:
            s.write(_frames(4))
            assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name]
            1 / 0
    assert _gone(procs[0].pid) and list(tmp_path.iterdir()) == []
    assert atomic.removed(e.value) == [f"the partial output {out}"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_encoder_that_dies_is_an_error_and_writes_nothing(tmp_path, monkeypatch, sig):
    # SIGTERM, not SIGINT: a process started in the background by a non-interactive shell (a CI job) has
    # SIGINT ignored, and ffmpeg inherits that until its own handler is in place, so an early SIGINT is lost
    def kill(where, **details):
        if where == "encoder-start":
            os.kill(details["pid"], sig)
            # SIGKILL: dead before the first frame. SIGTERM is ffmpeg's to handle once its handler is in place: it
            # exits (status 255) only after its next read of the pipe, so waiting here, before any frame, could hang
            if sig == signal.SIGKILL:
                os.waitid(os.P_PID, details["pid"], os.WEXITED | os.WNOWAIT)

    monkeypatch.setattr(stream_mod, "test_pause", kill)
    with pytest.raises(EncoderError, match=r"the video encoder \(ffmpeg\) .*nothing was written"):
        with VideoStream(tmp_path / "v.mp4").open(48, 32) as s:
            for _ in range(50):  # the pipe breaks: reported by write() or close()
                s.write(_frames(4))
            s.close()
    assert list(tmp_path.iterdir()) == []


def test_frames_and_formats_are_checked(tmp_path):
    from lightx2v.errors import InputError

    with pytest.raises(InputError, match="not .gif"):
        VideoStream(tmp_path / "v.gif")
    with pytest.raises(InputError, match="even frame sizes"):
        VideoStream(tmp_path / "v.mp4").open(47, 32)
    with VideoStream(tmp_path / "v.mp4").open(48, 32) as s:
        with pytest.raises(InputError, match=r"\[f, 32, 48, 3\]"):
            s.write(_frames(2, 32, 46))
        with pytest.raises(InputError, match="uint8"):
            s.write(np.zeros((1, 32, 48, 3), np.float32))
        s.abort()
    assert list(tmp_path.iterdir()) == []
    assert video.ffmpeg_exe()  # (imageio-ffmpeg's, or IMAGEIO_FFMPEG_EXE's)
