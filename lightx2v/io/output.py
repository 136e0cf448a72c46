"""Where a generation's file goes, in which format, and how it is put there.

The rules (the CLI's --output, the API's output_path):

- The extension decides the format: .mp4 (H.264), .webm (VP9), .gif, and the images .png, .webp,
  .jpg / .jpeg (one frame: num_frames 1). Any other extension (or none) is refused, naming these.
- Several images (an image model's num_images N > 1) go to N files named by index:
  out.png -> out_0.png ... out_{N-1}.png (a folder: `<default name>_0.png` ...). Each name is checked
  before any work; all are encoded to temp files first and then renamed, so a failure leaves none.
  A character device or FIFO gets every image written through, one after the other. A request's output_type must agree with
  the extension, except the default "mp4", which the extension overrides (see `file_format`).
- A path ending with a separator (`out/`), or an existing folder, is a folder: the default file
  name goes inside it (the folder is created).
- A missing file is created (with its folders). An existing regular file is replaced, with a
  one-line warning; `overwrite=False` (--no-overwrite) refuses it, before any work.
- A symlink is followed: the file it points to is what is written (atomically, beside it); the
  link stays a link. Its sidecar goes beside the link.
- A character device (/dev/null) or a FIFO is written through: the video is encoded to a temp
  file, whose bytes are then copied into it; it stays what it was. Its format is output_type's
  (mp4 by default): its name has no extension. A FIFO write waits for a reader. No sidecar.
- A block device, a socket or any other kind of file is refused.

Everything else is written atomically: to a hidden temp file beside the target (`.out.mp4.*.partial.mp4`),
renamed over it once complete; an error or a signal removes the temp file (io/atomic.py).
With `metadata`, a sidecar `<output>.json` (e.g. out.mp4.json) is written atomically next to the
file, and mp4 / webm / png / jpeg carry the same JSON in the file itself (io/video.py, io/image.py;
a WebP has the sidecar only).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightx2v.errors import InputError
from lightx2v.io.atomic import creation_refused, make_public, nearest_existing, note_removed, write_text_atomic

SUFFIXES = {".mp4": "mp4", ".webm": "webm", ".gif": "gif", ".png": "png", ".webp": "webp", ".jpg": "jpeg",
            ".jpeg": "jpeg"}
FORMATS = tuple(dict.fromkeys(SUFFIXES.values()))
IMAGE_FORMATS = ("png", "webp", "jpeg")  # one frame each (lightx2v.io.image.encode_image)
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}  # the extension a folder's default name gets
_SUPPORTED = ", ".join(SUFFIXES)
_KINDS = {stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class OutputTarget:
    """A checked output. kind: "new" (no file yet), "file" (a regular file, replaced), "stream" (a
    character device or FIFO, written through), "folder" (the default name goes inside)."""

    path: Path  # as the user named it
    real: Path  # symlinks followed: what is written
    kind: str
    fmt: str

    @property
    def replaces(self) -> bool:
        return self.kind == "file"


def is_folder_path(path: str | os.PathLike) -> bool:
    """`out/` (a trailing separator) or an existing folder."""
    text = os.fspath(path)
    return text.endswith(os.sep) or bool(os.altsep and text.endswith(os.altsep)) or os.path.isdir(text)


def file_format(output_type: str, output_path: str | os.PathLike | None) -> str:
    """The format written for `output_type` at `output_path`: the extension's (.mp4 .webm .gif .png)
    when the path names a file, and it must agree with output_type unless output_type is the
    default "mp4"; output_type's for a folder, a character device or a FIFO, or no path."""
    if output_path is None or is_folder_path(output_path) or _is_stream(Path(output_path)):
        return output_type
    path = Path(output_path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        what = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise InputError(f"output {path} has {what}; the extension decides the format: expected one of {_SUPPORTED}")
    if output_type != "mp4" and fmt != output_type:
        raise InputError(f"output_type {output_type!r} does not match the output file {path.name} "
                         f"(a .{fmt}); name a .{output_type} file or leave output_type as mp4")
    return fmt


def check_output(path: str | os.PathLike, num_frames: int | None = None, overwrite: bool = True,
                 output_type: str = "mp4", num_images: int = 1) -> OutputTarget:
    """Check an output before any work (see the module docstring); one-line InputError when refused.
    With `num_images` > 1 every indexed file name (`image_targets`) is checked too.

    Called by the CLI before loading the model, by `SamplingParams.validate`, and at save time."""
    target = _check_output(path, num_frames, overwrite, output_type)
    if num_images > 1:
        if target.fmt not in IMAGE_FORMATS:
            raise InputError(f"{num_images} images were asked for but the output {target.path} is a .{target.fmt}; "
                             "name a .png, .webp or .jpg file (written as NAME_0.png, NAME_1.png ...)")
        if target.kind in ("new", "file"):
            for i in range(num_images):
                _check_output(indexed_path(target.path, i), 1, overwrite, target.fmt)
    return target


def indexed_path(path: str | os.PathLike, i: int) -> Path:
    """out.png -> out_{i}.png: the name of image i of several."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{i}{path.suffix}")


def _check_output(path: str | os.PathLike, num_frames: int | None, overwrite: bool, output_type: str) -> OutputTarget:
    text = os.path.expanduser(os.fspath(path))
    if not text:
        raise InputError(f"the output path is empty; expected a file name such as out.mp4 (or one of {_SUPPORTED})")
    path = Path(text)  # (drops a trailing separator: `text` keeps it)
    folder = is_folder_path(text)
    mode = None
    if not folder:
        try:
            mode = os.stat(path).st_mode  # symlinks followed
        except FileNotFoundError:  # missing, or a dangling symlink: its target is created
            pass
        except OSError as exc:  # a symlink loop, a path through a file (ENOTDIR), no permission
            if isinstance(exc, NotADirectoryError):
                _check_creatable(path.parent, f"output folder {path.parent}")
            raise InputError(f"output {path} cannot be used: {exc.strerror}") from None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise InputError(f"output {path} is {kind}; expected a file name, a folder, a character device "
                             f"such as /dev/null, or a FIFO")
    fmt = file_format(output_type, text)
    if fmt not in FORMATS:
        raise InputError(f"output_type {fmt!r} is not written to a file; expected one of {', '.join(FORMATS)}")
    if fmt in IMAGE_FORMATS and num_frames is not None and num_frames != 1:
        raise InputError(f"a .{EXTENSIONS[fmt]} output is one image, but {num_frames} frames were asked for: "
                         f"use --frames 1 (num_frames=1), or a .mp4, .webm or .gif file")
    if fmt not in IMAGE_FORMATS:
        from lightx2v.io.video import check_encoder

        check_encoder(fmt)
    if folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"output folder {path} is a file; expected a folder (or drop the trailing /)")
        _check_creatable(path, f"output folder {path}")
        return OutputTarget(path, path, "folder", fmt)
    real = Path(os.path.realpath(path))
    if mode is None:
        _check_creatable(real.parent, f"output folder {real.parent}")
        return OutputTarget(path, real, "new", fmt)
    if stat.S_ISREG(mode):
        if not overwrite:
            raise InputError(f"output {path} exists and overwrite is off (--no-overwrite); choose another name or remove it")
        _check_creatable(real.parent, f"output folder {real.parent}")
        return OutputTarget(path, real, "file", fmt)
    return OutputTarget(path, real, "stream", fmt)  # a character device or a FIFO


def _is_stream(path: Path) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _check_creatable(folder: Path, what: str) -> None:
    """`folder` exists, or can be made, and a file can be created in it (tried, not guessed:
    root passes every permission check, but not a read-only mount nor /proc)."""
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise InputError(f"{what} is not writable: {probe} is a file, not a folder")
    refused = creation_refused(probe)
    if refused is not None:
        raise InputError(f"{what} is not writable ({refused} in {probe})")


def save(frames: np.ndarray, path: str | os.PathLike, *, fps: int = 16, output_type: str = "mp4",
         overwrite: bool = True, metadata: dict | None = None, default_stem: str = "output",
         crf: int | None = None) -> Path:
    """Write `frames` ([F, H, W, 3] float in [0, 1] or uint8) to `path` by the module's rules; the path written.

    `default_stem`: the file name (without extension) used when `path` is a folder."""
    target = resolve_output(path, len(frames), overwrite, output_type, default_stem)

    def encode(tmp: Path) -> None:
        if target.fmt in IMAGE_FORMATS:
            from lightx2v.io.image import encode_image

            encode_image(frames[0], tmp, target.fmt, metadata)
        else:
            from lightx2v.io.video import encode_video

            encode_video(frames, tmp, target.fmt, fps=fps, metadata=metadata, crf=crf)

    replaced = _write(target, overwrite, encode)
    finish_output(target, replaced, metadata, stacklevel=3)
    return target.path


def resolve_output(path: str | os.PathLike, num_frames: int | None, overwrite: bool, output_type: str,
                   default_stem: str) -> OutputTarget:
    """`check_output`, and for a folder the default file name inside it (checked in turn)."""
    target = check_output(path, num_frames, overwrite, output_type)
    if target.kind == "folder":
        ext = EXTENSIONS.get(target.fmt, target.fmt)
        target = check_output(target.path / f"{default_stem}.{ext}", num_frames, overwrite, target.fmt)
    return target


def image_type_for(path: str | os.PathLike) -> str:
    """The format of images written to `path` when no output type is asked for: the extension's
    (a video extension stays a video format: the caller refuses it), PNG for a folder, /dev/null or a FIFO."""
    fmt = file_format("mp4", path)
    if fmt == "mp4" and Path(path).suffix.lower() != ".mp4":
        return "png"  # no extension to go by
    return fmt


def image_targets(path: str | os.PathLike, n: int, overwrite: bool, output_type: str | None,
                  default_stem: str) -> list[OutputTarget]:
    """The n checked targets of n images: the path itself for one, `indexed_path` names for several
    (a device or FIFO: itself n times). output_type None (or the default "mp4"): `image_type_for`."""
    if output_type in (None, "mp4"):
        output_type = image_type_for(path)
    target = resolve_output(path, 1, overwrite, output_type, default_stem)
    if target.fmt not in IMAGE_FORMATS:
        raise InputError(f"output {target.path} is a .{target.fmt}; images are written as .png, .webp or .jpg")
    if n == 1 or target.kind == "stream":
        return [target] * n
    return [check_output(indexed_path(target.path, i), 1, overwrite, target.fmt) for i in range(n)]


def save_images(images: np.ndarray, path: str | os.PathLike, *, output_type: str | None = None, overwrite: bool = True,
                metadata: dict | None = None, default_stem: str = "output") -> list[Path]:
    """Write images ([N, H, W, 3] uint8, or float in [0, 1]) by the module's rules; the paths written.

    All N are encoded to temp files before the first is renamed into place, so an error (a full
    disk, an interrupt) leaves none of them; the metadata goes to each file and its sidecar, with
    `image_index` added when N > 1."""
    from lightx2v.io.image import encode_image

    targets = image_targets(path, len(images), overwrite, output_type, default_stem)
    temps: list[Path] = []
    try:
        for i, target in enumerate(targets):
            temps.append(temp_output(target))
            encode_image(images[i], temps[-1], target.fmt, _indexed_meta(metadata, i, len(targets)))
        replaced = [place_output(tmp, target, overwrite) for tmp, target in zip(temps, targets)]
    except BaseException as exc:
        for tmp, target in zip(temps, targets):
            if tmp.exists():  # not yet renamed into place
                discard_output(tmp, target, exc)
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    for i, (target, was) in enumerate(zip(targets, replaced)):
        finish_output(target, was, _indexed_meta(metadata, i, len(targets)), stacklevel=3)
    return [t.path for t in targets]


def _indexed_meta(metadata: dict | None, i: int, n: int) -> dict | None:
    return metadata if metadata is None or n == 1 else {**metadata, "image_index": i}


def finish_output(target: OutputTarget, replaced: bool, metadata: dict | None, stacklevel: int = 2) -> None:
    """After the file is in place: the overwrite warning and the sidecar (not for a device or FIFO)."""
    if replaced:
        warnings.warn(f"overwrote the existing file {target.path} (--no-overwrite, or overwrite=False, refuses instead)",
                      stacklevel=stacklevel)
    if metadata is not None and target.kind != "stream":
        write_sidecar(target.path, metadata)


def sidecar_path(path: str | os.PathLike) -> Path:
    """out.mp4 -> out.mp4.json"""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike, metadata: dict) -> Path | None:
    """The metadata as `<path>.json`, atomically (a symlink is followed; anything but a file is left alone)."""
    side = sidecar_path(path)
    real = Path(os.path.realpath(side))
    if os.path.lexists(real) and not real.is_file():
        warnings.warn(f"did not write the metadata file {side}: it exists and is not a regular file", stacklevel=3)
        return None
    write_text_atomic(real, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return side


def _write(target: OutputTarget, overwrite: bool, encode) -> bool:
    """encode(tmp) into a temp file, then put it in place; True when an existing file was replaced."""
    tmp = temp_output(target)
    try:
        encode(tmp)
        return place_output(tmp, target, overwrite)
    except BaseException as exc:
        discard_output(tmp, target, exc)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def temp_output(target: OutputTarget) -> Path:
    """The hidden temp file a writer fills: beside the target (`.out.mp4.*.partial.mp4`), or in the
    temp folder for a character device or FIFO."""
    stream = target.kind == "stream"
    if stream:
        folder = Path(tempfile.gettempdir())
    else:
        folder = target.real.parent
        folder.mkdir(parents=True, exist_ok=True)
    name = target.real.name if not stream else "lightx2v-out"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=f".partial.{target.fmt}", dir=folder)
    os.close(fd)
    return Path(tmp_name)


def place_output(tmp: Path, target: OutputTarget, overwrite: bool) -> bool:
    """The complete temp file into place (renamed; copied into a device or FIFO); True when an
    existing file was replaced."""
    if target.kind == "stream":
        _copy_into(tmp, target)
        return False
    return _move_into_place(tmp, target, overwrite)


def discard_output(tmp: Path, target: OutputTarget, exc: BaseException) -> None:
    """Remove the temp file of a write that `exc` stopped, and note it on `exc` (the CLI's line)."""
    tmp.unlink(missing_ok=True)
    note_removed(exc, f"the partial output {tmp}" if target.kind == "stream" else f"the partial output {target.path}")


def _copy_into(tmp: Path, target: OutputTarget) -> None:
    if not _is_stream(target.real):
        raise InputError(f"output {target.path} is no longer a character device or FIFO; nothing was written")
    fd = os.open(target.real, os.O_WRONLY)  # no O_CREAT / O_TRUNC: a device or FIFO, never a new file
    try:
        with os.fdopen(fd, "wb") as out, open(tmp, "rb") as src:
            shutil.copyfileobj(src, out)
    except BrokenPipeError:
        raise InputError(f"the reader of {target.path} closed it before the whole output was written") from None


def _move_into_place(tmp: Path, target: OutputTarget, overwrite: bool) -> bool:
    make_public(tmp)  # mkstemp made it private
    real = target.real
    try:
        mode = os.lstat(real).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):  # changed since the check: never rename over it
        raise InputError(f"output {target.path} is no longer a regular file; nothing was written")
    if overwrite:
        os.replace(tmp, real)
        return mode is not None
    try:
        os.link(tmp, real)  # fails if the name exists: no race with a file made meanwhile
    except FileExistsError:
        raise InputError(f"output {target.path} appeared while generating and overwrite is off; it was kept") from None
    except OSError:  # a file system without hard links
        if os.path.lexists(real):
            raise InputError(f"output {target.path} appeared while generating and overwrite is off; it was kept") from None
        os.replace(tmp, real)
    return False
