"""Video output: frames -> H.264 mp4, written atomically.

Frames are encoded by the ffmpeg binary that `imageio-ffmpeg` ships (no system ffmpeg needed)
into a temporary file beside the target, which is renamed over the target only once the encoder
has finished: an error or an interrupt leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from lightx2v.io.atomic import make_public
from lightx2v.errors import InputError


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float frames in [0, 1], [F, H, W, 3] -> uint8 (rounded, as PIL/diffusers export does)."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 16, crf: int = 17) -> Path:
    """Encode `frames` ([F, H, W, 3], uint8 or float in [0, 1]) as H.264 (yuv420p) mp4 at `path`."""
    import imageio_ffmpeg

    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [F, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise InputError(f"H.264 needs even frame sizes, got {w}x{h}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    writer = None
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp, (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, output_params=["-crf", str(crf)], ffmpeg_log_level="error",
        )
        writer.send(None)  # start the encoder
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        writer = None
        make_public(tmp)  # mkstemp made it private
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:  # stop ffmpeg before removing its output (an open file cannot go on Windows)
            try:
                writer.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def probe_mp4(path: str | Path) -> dict:
    """{'frames', 'width', 'height', 'fps', 'codec'} of an mp4, read back with ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        count = sum(1 for _ in reader)
    finally:
        reader.close()  # ends the ffmpeg process
    w, h = meta["size"]
    return {"frames": count, "width": w, "height": h, "fps": meta.get("fps"), "codec": meta.get("codec")}
