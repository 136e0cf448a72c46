"""Modes for files written atomically (temp file + rename).

`tempfile.mkstemp` / `mkdtemp` create private entries (0600 / 0700); once renamed into place they
should look like any file the user's umask would make. The umask can only be read by setting it,
which is process-wide, so it is read once, on first use, and reused.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a temp file (or folder) the mode a normal `open()` (or `mkdir`) would have given it."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())
