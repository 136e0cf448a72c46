"""Files and folders written atomically (a temp entry renamed into place), and what an interrupted run removed.

`tempfile.mkstemp` / `mkdtemp` create private entries (0600 / 0700); once renamed into place they
should look like any file the user's umask would make. The umask can only be read by setting it,
which is process-wide, so it is read once, on first use, and reused.

When an error or a signal (KeyboardInterrupt, or the CLI's SIGTERM, which subclasses it) stops a
write, the writer removes its temp entry and notes what it removed on the exception
(`note_removed`); the CLI names it in its one line ("interrupted (SIGTERM); removed the partial
output out.mp4").

`test_pause(point)` is for tests only: with LIGHTX2V_TEST_PAUSE_IN=<point> in the environment the
process prints "lightx2v: test pause at <point>" (and the details given) on stderr and sleeps,
so that a test can send a signal at that exact point (points: save, encoder-start, convert, demo).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: PathLike, folder: bool = False) -> None:
    """Give a temp file (or folder) the mode a normal `open()` (or `mkdir`) would have given it."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temp file beside it, renamed over it when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def nearest_existing(path: PathLike) -> Path:
    """`path` itself if it exists (a dangling link counts), else its nearest ancestor that does."""
    probe = Path(path)
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def creation_refused(folder: PathLike) -> str | None:
    """Why a file cannot be created in `folder` (tried, not guessed: root passes every permission
    check, but not a read-only mount nor /proc), or None when it can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_new_folder(path: PathLike, what: str, make_parents: bool = True) -> Path:
    """`path` can become a new folder: it is missing or an empty folder, and its parent exists (or,
    with `make_parents`, can be made) in a place where entries can be created (tried, not guessed:
    root passes every permission check, but not a read-only mount nor /proc). One InputError line otherwise."""
    from lightx2v.errors import InputError

    path = Path(path).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a folder; expected a new or empty folder")
    try:
        if path.is_dir() and any(path.iterdir()):
            raise InputError(f"{what} {path} is not empty; pass a new or empty folder (nothing was changed)")
    except PermissionError:
        raise InputError(f"{what} {path} cannot be read; pass a new or empty folder") from None
    parent = path.parent
    probe = nearest_existing(parent)
    if not probe.is_dir():
        raise InputError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    if probe != parent and not make_parents:
        raise InputError(f"the folder {parent} (where {what} {path.name} would go) does not exist")
    refused = creation_refused(probe)
    if refused is not None:
        raise InputError(f"{what} {path} cannot be created: {probe} is not writable ({refused})")
    return path


def place_folder(tmp: PathLike, dst: PathLike) -> None:
    """Rename the complete temp folder `tmp` to `dst` (missing, or an empty folder, which it replaces)."""
    make_public(tmp, folder=True)  # mkdtemp made it private
    dst = Path(dst)
    if dst.is_dir():
        dst.rmdir()  # empty (checked); rename() does not replace a folder on every platform
    os.rename(tmp, dst)


def note_removed(exc: BaseException, what: str) -> None:
    """Record on `exc` that the partial `what` was removed because of it (read by `removed`)."""
    try:
        exc.__dict__.setdefault("lightx2v_removed", []).append(what)
    except AttributeError:  # pragma: no cover - every exception instance has a __dict__
        pass


def removed(exc: BaseException) -> list[str]:
    """What was removed because of `exc` (see `note_removed`)."""
    return list(getattr(exc, "lightx2v_removed", ()))


def test_pause(point: str, **details) -> None:
    """Test-only hook (see the module docstring); does nothing unless LIGHTX2V_TEST_PAUSE_IN names `point`."""
    if os.environ.get("LIGHTX2V_TEST_PAUSE_IN") != point:
        return
    extra = "".join(f" {k}={v}" for k, v in details.items())
    print(f"lightx2v: test pause at {point}{extra}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("LIGHTX2V_TEST_PAUSE_S", "60")))


test_pause.__test__ = False  # not a pytest test, despite its name
