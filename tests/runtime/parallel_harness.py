"""Run test functions on N gloo ranks on the CPU (torch.distributed tests without torchrun).

Starting a process that imports torch takes seconds, so the ranks are started once and reused:

    from tests.runtime.parallel_harness import RankPool

    @pytest.fixture(scope="module")
    def ranks():
        with RankPool(2) as pool:      # 2 processes, gloo initialised in each (127.0.0.1, a free port)
            yield pool

    def _body(x):                      # module level: it is pickled to the ranks
        import torch.distributed as dist
        return x + dist.get_rank()

    def test_something(ranks):
        assert ranks.run(_body, 1) == [1, 2]   # each rank's result, in rank order

`pool.run(fn, *args, **kwargs)` runs `fn(*args, **kwargs)` on every rank at once (fn and its
arguments must be picklable; tensors are fine) and returns the list of results in rank order, or
raises the error of the lowest rank that failed (the original exception when it can be pickled,
with the rank's traceback added as a note). A run that does not finish within `timeout` seconds
(a rank waiting in a collective that another rank never joined) stops the pool and raises
TimeoutError; so does a rank process that died. `run_on_ranks(fn, n, *args)` is the one-shot form
(starts and stops its own pool). Each rank runs torch with one thread (tests share few cores).

Start method: "fork" where the platform has it (the default): the ranks inherit the parent's imports,
so a pool starts in milliseconds instead of a torch (+ dynamo) import per rank, ~10 s on two busy
cores. Forked ranks must not use CUDA if the parent initialised it, and the parent must not have
initialised torch.distributed; pass `start_method="spawn"` for a clean interpreter per rank
(then the functions must be importable by module name, as pytest's test modules are).
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp

__all__ = ["RankPool", "run_on_ranks"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, tasks, results) -> None:
    """A rank's process: join the gloo group, then run tasks from its queue until None."""
    import datetime

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        while (task := tasks.get()) is not None:
            fn, args, kwargs = task
            try:
                results.put((rank, True, fn(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
                text = traceback.format_exc()
                try:  # the parent must be able to rebuild it, or it would never see the failure
                    pickle.loads(pickle.dumps(exc))
                except Exception:  # noqa: BLE001
                    exc = RuntimeError(f"{type(exc).__name__}: {exc}")
                results.put((rank, False, (exc, text)))
    finally:
        dist.destroy_process_group()


class RankPool:
    """`world` processes in one gloo group, reused for every `run` (see the module docstring)."""

    def __init__(self, world: int = 2, timeout: float = 120.0, start_method: str | None = None) -> None:
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        self.world, self.timeout = world, timeout
        self._tasks = [ctx.Queue() for _ in range(world)]
        self._results = ctx.Queue()
        port = _free_port()
        self._procs = [ctx.Process(target=_rank_main, args=(r, world, port, self._tasks[r], self._results), daemon=True)
                       for r in range(world)]
        for p in self._procs:
            p.start()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        if not self._procs:
            raise RuntimeError("RankPool is closed (an earlier run timed out or a rank died)")
        for q in self._tasks:
            q.put((fn, args, kwargs))
        got: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + self.timeout
        while len(got) < self.world:
            try:
                rank, ok, value = self._results.get(timeout=1.0)
                got[rank] = (ok, value)
            except queue.Empty:  # check the deadline and the processes
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.close(kill=True)
                    why = f"rank(s) {dead} died" if dead else f"no result within {self.timeout:.0f} s"
                    raise TimeoutError(f"{fn.__name__} on {self.world} ranks: {why}; results from ranks {sorted(got)}")
        for rank in range(self.world):
            ok, value = got[rank]
            if not ok:
                exc, text = value
                exc.add_note(f"raised on rank {rank} of {self.world}:\n{text}")
                raise exc
        return [got[r][1] for r in range(self.world)]

    def close(self, kill: bool = False) -> None:
        for q, p in zip(self._tasks, self._procs):
            if not kill and p.is_alive():
                q.put(None)
        for p in self._procs:
            p.join(timeout=0 if kill else 10)
            if p.is_alive():
                p.kill()
                p.join()
        self._procs = []

    def __enter__(self) -> "RankPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_on_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 120.0, **kwargs: Any) -> list[Any]:
    """`fn(*args, **kwargs)` on `world` fresh gloo ranks: each rank's result, in rank order."""
    with RankPool(world, timeout) as pool:
        return pool.run(fn, *args, **kwargs)


def assert_ranks_match_one_process(name: str, got: list, want: dict, par_kw: dict, load_kw: dict, tol: float) -> None:
    """A 2-rank generation (`got`: each rank's {"latents", "log", "stats"}) against the one-process
    one (`want`): latents within `tol`, each rank's parallel log line, the CFG branches' forwards
    shared between the ranks (cfg_parallel) or the self-attentions wrapped (ulysses), the cache's skips."""
    for r, g in enumerate(got):
        err = float((g["latents"] - want["latents"]).abs().max())
        assert err <= tol, f"{name}: rank {r} differs from one process by {err:.2e}"
    assert want["latents"].abs().max() > 0.1
    assert [next(x for x in g["log"] if x.startswith("parallel: rank")) for g in got] == [
        f"parallel: rank {r} of 2 on cpu: " + ("cfg 2" if "cfg_parallel" in par_kw else "ulysses 2") for r in range(2)]
    if "cfg_parallel" in par_kw:  # one branch's forwards per rank: together, the one process's
        assert sum(g["stats"]["model_calls"] for g in got) == want["stats"]["model_calls"]
    else:
        assert any("tokens split over 2 ranks (ulysses 2), 2 self-attentions wrapped" in x for x in got[0]["log"])
    if "cache" in load_kw:
        assert got[0]["stats"].get("model_calls_skipped", 0) > 0
