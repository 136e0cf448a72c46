"""SIGINT and SIGTERM end a command cleanly; a closed stdout pipe ends it quietly.

While a command runs (`stop_on_signals`), SIGINT (Ctrl-C) and SIGTERM (`kill`, a job scheduler,
`docker stop`) both raise `Interrupted`, a KeyboardInterrupt: every writer's cleanup runs as the
exception unwinds (the video encoder is killed and reaped, its temp file removed; a partial convert
folder, a demo's temp folder removed), and the CLI prints one line and exits 128 + the signal:

    lightx2v: interrupted (SIGTERM); removed the partial output out.mp4       exit 143 (SIGINT: 130)

A second signal while that cleanup runs is ignored, with a note; a third stops at once (exit 128 +
signal, the cleanup not finished). Only the CLI installs these handlers, and only from the main
thread; the library never touches signal handling.

A reader that closes the pipe early (`lightx2v info --json | head -1`) ends the command quietly
with exit 141 (128 + SIGPIPE, what a shell reports for any program stopped that way).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from lightx2v.io.atomic import removed

SIGPIPE_EXIT = 128 + 13


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum, frame) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise Interrupted(signum)
        if len(seen) == 2:
            _say("still removing partial files; interrupt once more to stop at once (leaving them)")
            return
        os._exit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for SIGINT (and a KeyboardInterrupt raised any other way), 143 for SIGTERM."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def describe(exc: KeyboardInterrupt) -> str:
    """'interrupted (SIGTERM); removed the partial output out.mp4' (or '; nothing was written')."""
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    gone = removed(exc)
    return f"interrupted ({name}); " + (f"removed {' and '.join(gone)}" if gone else "nothing was written")


def quiet_broken_pipe() -> int:
    """stdout's reader is gone: point stdout at /dev/null so that the exit-time flush does not
    print an error, and return 141."""
    if sys.stdout is not sys.__stdout__:  # a test's capture, not the process's stdout
        return SIGPIPE_EXIT
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout has no file descriptor
        pass
    return SIGPIPE_EXIT


def _say(text: str) -> None:
    try:
        print(f"lightx2v: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
