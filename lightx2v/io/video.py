"""Video encoding: frames -> .mp4 (H.264), .webm (VP9) or .gif, by the ffmpeg that imageio-ffmpeg ships.

`encode_video` writes one file with no atomic logic of its own (io/output.py decides where the
temp file goes and puts it in place). The ffmpeg process is run here rather than through
`imageio_ffmpeg.write_frames` because the run needs what that generator hides: the process (to
kill and reap it when the run is interrupted), its exit status (an encoder that died, of a signal
or an error, must not leave a truncated file that looks finished) and its error output.

    mp4   libx264 (preset veryfast), yuv420p, crf 17, `+faststart` (the index first: a browser plays it while it downloads)
    webm  libvpx-vp9, yuv420p, constant quality (crf 30)
    gif   one palette for the whole clip (palettegen + paletteuse), looping

ffmpeg is started in its own session: a Ctrl-C in the terminal goes to lightx2v only, which stops
the encoder itself (kill + wait) and removes the partial file; ffmpeg never finishes a truncated
file on its own. The metadata JSON (see io/output.py) goes into the container's `comment` tag for
mp4 and webm (`read_metadata` reads it back; so do ffprobe and mediainfo); gif has no such tag.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lightx2v.errors import InputError, LightX2VError
from lightx2v.io.atomic import test_pause

VIDEO_FORMATS = ("mp4", "webm", "gif")
# format -> (encoder it needs, ffmpeg output options)
_CODECS = {
    # preset veryfast: 3.7x faster than libx264's default (medium) at crf 17, a file of about the same
    # size (480P x 81 frames on 2 cores: 1.33 s vs 4.97 s, 5.9 vs 6.9 MB; 2026-11-30)
    "mp4": ("libx264", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-crf", "17",
                        "-movflags", "+faststart"]),
    "webm": ("libvpx-vp9", ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "0", "-crf", "30",
                            "-row-mt", "1", "-deadline", "good", "-cpu-used", "4"]),
    "gif": ("gif", ["-filter_complex", "split[a][b];[a]palettegen[p];[b][p]paletteuse", "-loop", "0"]),
}
COMMENT_LIMIT = 32_000  # characters of metadata JSON in the container (the sidecar has all of it)


class EncoderError(LightX2VError):
    """The video encoder (ffmpeg) failed or was stopped; nothing was written."""

    exit_code = 1


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float frames in [0, 1], [F, H, W, 3] -> uint8 (rounded, as PIL/diffusers export does)."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's binary, or the one IMAGEIO_FFMPEG_EXE names (imageio-ffmpeg's own setting,
    which it reads first; honoured here too where imageio-ffmpeg is not installed, as on a GPU
    machine that runs benchmarks/vae_save.py --ffmpeg PATH)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        exe = os.environ.get("IMAGEIO_FFMPEG_EXE")
        if exe:
            return exe
        raise
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=1)
def encoders() -> frozenset[str]:
    """Names of the video encoders the bundled ffmpeg has (`ffmpeg -encoders`)."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True,
                         check=False, timeout=60).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0].startswith("V"):
            names.add(parts[1])
    return frozenset(names)


def check_encoder(fmt: str) -> None:
    """Refuse a format whose encoder the bundled ffmpeg lacks (one line)."""
    enc = _CODECS[fmt][0]
    if enc not in encoders():
        raise InputError(f"cannot write .{fmt}: the ffmpeg that imageio-ffmpeg ships ({ffmpeg_exe()}) has no "
                         f"{enc} encoder; write .mp4 instead")


def container_comment(metadata: dict | None) -> str | None:
    """The metadata as compact JSON for the container; prompts are cut when it would be too long."""
    if not metadata:
        return None
    text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
    if len(text) > COMMENT_LIMIT:
        short = dict(metadata, truncated=True)
        for key in ("prompt", "negative_prompt"):
            if isinstance(short.get(key), str):
                short[key] = short[key][:1000]
        text = json.dumps(short, ensure_ascii=False, separators=(",", ":"))[:COMMENT_LIMIT]
    return text


# the codecs with a quality scale (ffmpeg -crf: lower is better and larger; 0-51 accepted by both)
CRF_RANGE = {"mp4": (0, 51), "webm": (0, 51)}


def _with_crf(options: list[str], crf: int | None) -> list[str]:
    if crf is None:
        return options
    i = options.index("-crf")
    return [*options[: i + 1], str(int(crf)), *options[i + 2:]]


def encode_video(frames: np.ndarray, dst: str | Path, fmt: str, fps: int = 16,
                 metadata: dict | None = None, crf: int | None = None) -> None:
    """Encode `frames` ([F, H, W, 3], uint8 or float in [0, 1]) as `fmt` into the file `dst` (replaced).
    `crf`: the quality of mp4 (default 17) and webm (default 30), 0-51; gif has none."""
    if fmt not in _CODECS:
        raise InputError(f"unknown video format {fmt!r}; expected one of {', '.join(VIDEO_FORMATS)}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [F, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    _, h, w, _ = frames.shape
    if fmt != "gif" and (h % 2 or w % 2):
        raise InputError(f"{fmt} (yuv420p) needs even frame sizes, got {w}x{h}")
    check_encoder(fmt)
    cmd = ffmpeg_command(fmt, w, h, dst, fps=fps, metadata=metadata, crf=crf)
    with tempfile.TemporaryFile() as log:
        _run(cmd, frames, log)


def ffmpeg_command(fmt: str, width: int, height: int, dst: str | Path, fps: int = 16,
                   metadata: dict | None = None, crf: int | None = None) -> list[str]:
    """The ffmpeg command that reads rgb24 frames of width x height on stdin and writes `fmt` to `dst`."""
    comment = container_comment(metadata) if fmt != "gif" else None
    return [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(int(fps)), "-i", "-", "-an",
            *_with_crf(_CODECS[fmt][1], crf if fmt in CRF_RANGE else None),
            *(["-metadata", f"comment={comment}"] if comment else []), "-f", fmt, str(dst)]


def start_encoder(cmd: list[str], log) -> subprocess.Popen:
    """ffmpeg in its own session (the terminal's Ctrl-C, sent to its foreground process group,
    reaches only us), reading stdin unbuffered, its errors to the file `log`."""
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                            bufsize=0, start_new_session=True)


def encoder_error(rc: int, log) -> "EncoderError":
    """The error of an ffmpeg that exited with status `rc` (negative: a signal), its last log line quoted."""
    log.seek(0)
    lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    how = f"was stopped by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    last = f" ({lines[-1].strip()})" if lines else ""
    return EncoderError(f"the video encoder (ffmpeg) {how}{last}; nothing was written")


def _run(cmd: list[str], frames: np.ndarray, log) -> None:
    proc = start_encoder(cmd, log)
    try:
        test_pause("encoder-start", pid=proc.pid)
        try:
            for i, frame in enumerate(frames):
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                if i == len(frames) // 2:
                    test_pause("save", pid=proc.pid)
        except BrokenPipeError:
            pass  # ffmpeg died; its status says why
        finally:
            proc.stdin.close()
        rc = proc.wait()
    except BaseException:  # an error, Ctrl-C or SIGTERM: stop the encoder before its output is removed
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise encoder_error(rc, log)


def probe_mp4(path: str | Path) -> dict:
    """{'frames', 'width', 'height', 'fps', 'codec'} of a video (mp4, webm, gif), read back with ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        count = sum(1 for _ in reader)
    finally:
        reader.close()  # ends the ffmpeg process
    w, h = meta["size"]
    return {"frames": count, "width": w, "height": h, "fps": meta.get("fps"),
            "codec": (meta.get("codec") or "").rstrip(",")}  # imageio reads "gif, bgra" as "gif,"


def read_metadata(path: str | Path) -> dict | None:
    """The metadata JSON `encode_video` put in a video's `comment` tag (None when there is none)."""
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, check=True, timeout=60).stdout.decode("utf-8")
    tags = _parse_ffmetadata(out)
    comment = tags.get("comment")
    return None if comment is None else json.loads(comment)


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """The global tags of ffmpeg's ffmetadata format: key=value lines (`=;#\\` and newlines escaped
    by a backslash), up to the first [SECTION]."""
    tags: dict[str, str] = {}
    key, buf, i, in_value = None, [], 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i + 1])
            i += 2
            continue
        if c == "[" and not in_value and not buf:
            break  # [STREAM] / [CHAPTER] sections follow the global tags
        if c in ";#" and not in_value and not buf:  # a comment line
            i = text.find("\n", i)
            i = len(text) if i < 0 else i + 1
            continue
        if c == "=" and not in_value:
            key, buf, in_value = "".join(buf).lower(), [], True
        elif c == "\n":
            if in_value:
                tags[key] = "".join(buf)
            key, buf, in_value = None, [], False
        else:
            buf.append(c)
        i += 1
    if in_value:
        tags[key] = "".join(buf)
    return tags
