"""The store is the truth: a real `kill -9` of the server while a job runs and others wait, then a
restart on the same data dir: every job completes exactly once. SIGTERM gives the running job
back to the queue. (A job that keeps killing its server is failed after --max-attempts: the
store's claim decides it, tests/server/test_store.py.)"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

from tests.server.conftest import SMALL, ServerProcess, wait_for

SLOW = {"prompt": "slow", "size": "16x16", "num_frames": "1", "num_inference_steps": "30"}


def rows(data_dir) -> dict:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return {r[0]: r[1:] for r in db.execute("SELECT id, status, attempts, output FROM jobs")}


def wait_running(h, vid: str, progress: int = 3) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        body = h.get(f"/v1/videos/{vid}").json()
        if body["status"] == "in_progress" and body["progress"] >= progress:
            return
        time.sleep(0.05)
    raise AssertionError(f"{vid} never ran: {body}")


def test_kill_9_then_restart_loses_nothing_and_sigterm_requeues(tiny_model, tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(tiny_model, data, "--max-queue", "4").start()
    with first.client() as h:
        slow = h.post("/v1/videos", data=SLOW).json()["id"]
        queued = [h.post("/v1/videos", data=SMALL | {"prompt": f"q{i}"}).json()["id"] for i in range(3)]
        full = h.post("/v1/videos", data=SMALL | {"prompt": "one too many"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
        assert full.json()["error"]["code"] == "queue_full"
        wait_running(h, slow)
    first.kill()
    before = rows(data)
    assert before[slow][:2] == ("in_progress", 1)
    assert all(before[q][0] == "queued" for q in queued)

    second = ServerProcess(tiny_model, data, "--max-queue", "4").start()
    try:
        with second.client() as h:
            done = {vid: wait_for(h, vid) for vid in [slow, *queued]}
            assert all(v["status"] == "completed" for v in done.values()), done
            assert all(h.get(f"/v1/videos/{v}/content").content[4:8] == b"ftyp" for v in done)
            # graceful shutdown: the running job goes back to the queue, its attempt not counted
            longer = h.post("/v1/videos", data=SLOW | {"num_inference_steps": "400"}).json()["id"]
            wait_running(h, longer)
    finally:
        t = time.time()
        second.stop()
    assert time.time() - t < 20  # after the current step, not after the job
    after = rows(data)
    assert after[longer][:2] == ("queued", 0) and "given back to the queue" in second.log()
    assert after[slow][1] == 2 and all(after[q][1] == 1 for q in queued)  # the killed one ran again, once
    runs = Counter(e["job"] for s in (first, second) for e in s.log_events() if e["msg"].startswith("running"))
    completions = Counter(e["job"] for s in (first, second) for e in s.log_events() if e["msg"].startswith("completed"))
    assert runs == {slow: 2, longer: 1, **{q: 1 for q in queued}}
    assert completions == {v: 1 for v in [slow, *queued]}
    assert "queued again" in second.log()
    videos = sorted(p.name for p in (data / "videos").iterdir())
    assert videos == sorted(f"{v}.mp4{s}" for v in [slow, *queued] for s in ("", ".json"))  # video + metadata
