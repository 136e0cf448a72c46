"""A video file encoded while its frames are still being made: `VideoStream` (mp4 only).

    stream = VideoStream("out.mp4", fps=16, metadata=...).open(width, height)
    for chunk in vae.decode_chunks(latents):          # the next chunk decodes ...
        stream.write(to_uint8(chunk))                 # ... while a thread feeds this one to ffmpeg
    path = stream.close()                             # the encoder's tail, +faststart, then the rename

`write` takes uint8 frames [f, H, W, 3] (a torch tensor on any device, or numpy). A CUDA tensor is
copied into pinned host memory without blocking (an event marks when the copy is done), and a
background thread waits for it and writes the bytes to ffmpeg's stdin: the decode of the next
chunk is not held up by the copy nor by the pipe. At most `depth` chunks wait in the queue (16: 64
frames, 77 MB of pinned memory at 480P; a slower encoder then holds the decode back, which would
otherwise only wait longer at the end). After the last chunk only the end of the encode and the
`+faststart` rewrite remain: the file is ready a fraction of a second after the decode, instead
of the whole encode after it (io/video.py's `encode_video`, which the other formats still use).

The file follows io/output.py's rules exactly as `save` does (a hidden temp file beside the
target, renamed over it; a device or FIFO written through; the sidecar; the overwrite warning),
with the same ffmpeg arguments (io/video.py's `ffmpeg_command`). ffmpeg runs in its own session.
`abort(exc)` (or an exception inside `with stream:`) kills and reaps ffmpeg, stops the thread and
removes the temp file, noting it on `exc` (the CLI's "removed the partial output" line); an
encoder that dies is an EncoderError at the next `write` or at `close`, and nothing is written.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lightx2v.errors import InputError
from lightx2v.io.atomic import test_pause
from lightx2v.io.output import (
    OutputTarget, discard_output, finish_output, place_output, resolve_output, temp_output,
)
from lightx2v.io.video import check_encoder, encoder_error, ffmpeg_command, start_encoder

STREAM_FORMATS = ("mp4",)
_DONE = object()  # the queue's end marker


class VideoStream:
    """An mp4 written as its frames arrive (see the module docstring). State: one ffmpeg process,
    one writer thread, one temp file; `abort()` (or `close()`) releases all three."""

    def __init__(self, path: str | os.PathLike, *, fps: int = 16, overwrite: bool = True,
                 metadata: dict | None = None, default_stem: str = "output", crf: int | None = None,
                 output_type: str = "mp4", num_frames: int | None = None, depth: int = 16) -> None:
        self.target: OutputTarget = resolve_output(path, num_frames, overwrite, output_type, default_stem)
        if self.target.fmt not in STREAM_FORMATS:
            raise InputError(f"a streamed video is written as {', '.join(STREAM_FORMATS)}, not .{self.target.fmt}; "
                             "use lightx2v.io.output.save")
        self.fps, self.overwrite, self.metadata, self.crf = fps, overwrite, metadata, crf
        self.num_frames = num_frames
        self.frames_written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._tmp: Path | None = None
        self._proc = None
        self._log = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # what stopped the writer thread
        self._size: tuple[int, int] | None = None
        self._done = False

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self, width: int, height: int) -> "VideoStream":
        """Start ffmpeg on a new temp file for frames of width x height; returns self."""
        if self._proc is not None or self._done:
            raise RuntimeError("VideoStream.open: already opened")
        if width % 2 or height % 2:
            raise InputError(f"mp4 (yuv420p) needs even frame sizes, got {width}x{height}")
        check_encoder(self.target.fmt)
        self._size = (width, height)
        self._tmp = temp_output(self.target)
        try:
            self._log = tempfile.TemporaryFile()
            cmd = ffmpeg_command(self.target.fmt, width, height, self._tmp, fps=self.fps, metadata=self.metadata,
                                 crf=self.crf)
            self._proc = start_encoder(cmd, self._log)
            self._thread = threading.Thread(target=self._feed, name="lightx2v-video-stream", daemon=True)
            self._thread.start()
            test_pause("encoder-start", pid=self._proc.pid)
        except BaseException as exc:
            self.abort(exc)
            raise
        return self

    def write(self, frames: Any) -> None:
        """Queue uint8 frames [f, H, W, 3] (torch, any device, or numpy) for the encoder."""
        if self._proc is None or self._done:
            raise RuntimeError("VideoStream.write: not open")
        self._raise_if_failed()
        item = _to_host(frames, self._size)
        while True:  # a bounded queue; a dead writer thread must not leave us waiting
            try:
                self._queue.put(item, timeout=0.1)
                break
            except queue.Full:
                self._raise_if_failed()
        before, self.frames_written = self.frames_written, self.frames_written + len(item[0])
        half = (self.num_frames or 0) // 2
        if before <= half < self.frames_written:
            test_pause("save", pid=self._proc.pid)

    def close(self) -> Path:
        """Finish the encode and put the file in place (io/output.py's rules); the path written."""
        if self._proc is None or self._done:
            raise RuntimeError("VideoStream.close: not open")
        try:
            self._queue.put(_DONE)
            self._thread.join()
            self._proc.stdin.close()
            rc = self._proc.wait()
            if rc != 0:
                raise encoder_error(rc, self._log)
            if self._error is not None:
                raise self._error
            replaced = place_output(self._tmp, self.target, self.overwrite)
        except BaseException as exc:
            self.abort(exc)
            raise
        self._release()
        finish_output(self.target, replaced, self.metadata, stacklevel=3)
        return self.target.path

    def abort(self, exc: BaseException | None = None) -> None:
        """Stop everything and remove the temp file (noted on `exc` when given). Idempotent."""
        if self._done:
            return
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        if self._thread is not None and self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")  # the thread drains, writes nothing more
            try:
                self._queue.put(_DONE, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=10)
        if self._tmp is not None:
            if exc is not None:
                discard_output(self._tmp, self.target, exc)
            else:
                self._tmp.unlink(missing_ok=True)
        self._release()

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self.abort(exc)
        return False

    # -- internals ------------------------------------------------------------------------------
    def _release(self) -> None:
        self._done = True
        if self._proc is not None and self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)  # placed already (renamed), or to be discarded

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        rc = self._proc.wait()  # the writer stopped: the encoder died (its status says why)
        raise encoder_error(rc, self._log) if rc != 0 else self._error

    def _feed(self) -> None:
        """The writer thread: host copies -> ffmpeg's stdin, in order; after an error it drains the queue."""
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue
            data, ready = item
            try:
                if ready is not None:
                    ready.synchronize()  # the non-blocking device-to-host copy has landed
                view = memoryview(np.ascontiguousarray(data.numpy() if hasattr(data, "numpy") else data)).cast("B")
                while view:  # a raw pipe may take part of a write (a signal)
                    n = self._proc.stdin.write(view)
                    view = view[n:]
            except BaseException as exc:  # BrokenPipeError: ffmpeg died; close() / write() report it
                self._error = exc


def _to_host(frames: Any, size: tuple[int, int] | None) -> tuple[Any, Any]:
    """(host frames, event or None): a CUDA tensor copied into pinned memory without blocking."""
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[3] != 3 or (size is not None and (shape[2], shape[1]) != size):
        raise InputError(f"stream frames must be [f, {size[1] if size else 'H'}, {size[0] if size else 'W'}, 3] uint8, "
                         f"got shape {shape}")
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise InputError(f"stream frames must be uint8, got {frames.dtype}")
        return frames, None
    import torch

    if frames.dtype != torch.uint8:
        raise InputError(f"stream frames must be uint8, got {frames.dtype}")
    if frames.device.type != "cuda":
        return frames.cpu().contiguous(), None
    host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready
