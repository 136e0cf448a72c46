"""A soak on the shared server: 50 jobs from 4 concurrent clients, none lost, none twice."""

from __future__ import annotations

import threading

from tests.server.conftest import SMALL, wait_for


def test_soak_50_jobs_from_4_clients(shared_server):
    ids, errors, lock = [], [], threading.Lock()

    def client(n):
        with shared_server.client() as h:
            for i in range(13 if n < 2 else 12):
                r = h.post("/v1/videos", data=SMALL | {"prompt": f"client {n} job {i}", "seed": str(i)})
                with lock:
                    (ids if r.status_code == 200 else errors).append(r.json().get("id") or r.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ids) == 50 and len(set(ids)) == 50
    with shared_server.client() as h:
        done = [wait_for(h, vid, timeout=180) for vid in ids]
    assert all(d["status"] == "completed" for d in done)
    videos = shared_server.data_dir / "videos"
    assert all((videos / f"{vid}.mp4").is_file() for vid in ids)
    runs = [e["job"] for e in shared_server.log_events() if e["msg"].startswith("running") and e["job"] in set(ids)]
    assert sorted(runs) == sorted(ids)  # each ran once
