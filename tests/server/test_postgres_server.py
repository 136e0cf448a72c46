"""Two real server processes sharing one queue on a real PostgreSQL server: every job runs exactly
once, and both workers take jobs (skipped, with the reason, without PostgreSQL's binaries)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from tests.server.conftest import SMALL, ServerProcess, wait_for


def test_two_servers_share_one_queue(tiny_model, tmp_path):
    pytest.importorskip("psycopg")
    from tests.server.pg import PostgresServer

    pg, reason = PostgresServer.start(tmp_path / "pg")
    if pg is None:
        pytest.skip(reason)
    servers = []
    try:
        url = pg.new_database("shared")
        data = tmp_path / "data"  # one data dir (shared storage in production: NFS or the like)
        servers = [ServerProcess(tiny_model, data, "--store", url) for _ in range(2)]
        starts = [threading.Thread(target=s.start) for s in servers]  # at once: a start is ~10 s of imports
        for t in starts:
            t.start()
        for t in starts:
            t.join()
        assert all(s.proc is not None and s.proc.poll() is None for s in servers)
        with servers[0].client() as a, servers[1].client() as b:
            ids = [(a if i % 2 else b).post("/v1/videos", data=SMALL | {"prompt": f"p{i}"}).json()["id"]
                   for i in range(8)]
            done = [wait_for(b, vid) for vid in ids]
        assert all(d["status"] == "completed" for d in done)
        runs = Counter(e["job"] for s in servers for e in s.log_events() if e["msg"].startswith("running"))
        assert runs == {vid: 1 for vid in ids}
        per_server = [sum(1 for e in s.log_events() if e["msg"].startswith("running")) for s in servers]
        assert sum(per_server) == 8
    finally:
        for s in servers:
            if s.proc is not None:
                s.stop()
        pg.stop()
