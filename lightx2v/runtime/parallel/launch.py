"""A failure on one rank stops every rank, with one message: `fail_together()` (the CLI's generate).

Without it, the other ranks of a failed one wait in their next collective (NCCL: until its
timeout, minutes). Inside `with fail_together():` on every rank of a launch of several processes:
  - the rank that fails first posts its exit code and its one line under a key of the launch's
    rendezvous store (torchrun's TCPStore: reachable when collectives are not), prints the line,
    waits (a few seconds at most) for the others to acknowledge, and exits with its code;
  - every other rank has a watcher thread polling that key: when it appears it acknowledges and
    exits at once with the same code, printing nothing (a rank blocked in a collective included);
  - a rank whose own error comes second (a peer's exit breaking its collective) finds the key taken
    and exits quietly too.
The exits are `os._exit`: a rank whose peers are gone cannot leave a collective or tear its process
group down cleanly. Before the process group exists (a bad flag: every rank fails alike) rank 0
prints the line and the others exit with the same code silently. With one process this is a no-op.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager

KEY = "lightx2v/failed"
ACK = "lightx2v/failed_ack"
POLL_S = 0.2
GRACE_S = 3.0


def _store():
    """The default process group's store, or None before the group exists."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def _line(exc: BaseException, rank: int) -> tuple[int, str]:
    from lightx2v.errors import GenerationCancelled, LightX2VError

    if isinstance(exc, LightX2VError):
        return exc.exit_code, f"lightx2v: error: {exc} (rank {rank})"
    if isinstance(exc, GenerationCancelled):
        return 130, f"lightx2v: {exc} (rank {rank})"
    return 1, f"lightx2v: error: rank {rank} failed: {type(exc).__name__}: {exc}".splitlines()[0]


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _watch(stop: threading.Event) -> None:
    """A peer's failure posted under KEY: acknowledge and exit with its code."""
    while not stop.wait(POLL_S):
        store = _store()
        if store is None:
            continue
        try:
            if not store.check([KEY]):
                continue
            code = int(store.get(KEY).decode().partition(" ")[0])
            store.add(ACK, 1)
        except Exception:  # the store's host (rank 0 without torchrun's agent) has finished: stop watching
            return
        time.sleep(2 * POLL_S)  # the store may live in this process (rank 0): let the failed rank read the ack
        _exit(code)


@contextmanager
def fail_together():
    """Run the block so that an exception on any rank ends every rank (see the module docstring)."""
    from lightx2v.runtime.parallel.state import environment

    world, rank, _ = environment()
    if world == 1:
        yield
        return
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(stop,), name="lightx2v-fail-together", daemon=True)
    watcher.start()
    try:
        yield
    except Exception as exc:
        stop.set()
        code, line = _line(exc, rank)
        store = _store()
        if store is None:  # before the process group: every rank fails alike; rank 0 says it
            if rank == 0:
                print(line, file=sys.stderr)
            _exit(code)
        try:
            first = store.compare_set(KEY, "", f"{code} {line}").decode() == f"{code} {line}"
        except Exception:
            first = True
        if not first:  # a peer failed first and said so
            _safe_add(store)
            time.sleep(2 * POLL_S)  # as the watcher: the failed rank reads the ack from a store that may live here
            _exit(code)
        print(line, file=sys.stderr)
        if code == 1:
            traceback.print_exception(exc, file=sys.stderr)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and _acks(store) < world - 1:
            time.sleep(POLL_S / 2)
        _exit(code)
    finally:
        stop.set()


def _safe_add(store) -> None:
    try:
        store.add(ACK, 1)
    except Exception:
        pass


def _acks(store) -> int:
    try:
        return int(store.add(ACK, 0))
    except Exception:  # the store's host (a rank that acknowledged) has exited: nobody is left to wait for
        return 1 << 30
