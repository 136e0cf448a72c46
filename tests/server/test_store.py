"""The job store's interface on SQLite and on a real PostgreSQL server (started here in a temp
folder; skipped with the reason when its binaries are absent): lifecycle, leases and takeover,
attempts, cancel, queue bound, pagination, and concurrent claims that never hand a job out twice."""

from __future__ import annotations

import threading
import time

import pytest

from lightx2v.server.store import QueueFull, SQLiteStore

_db_count = [0]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    pytest.importorskip("psycopg")
    from tests.server.pg import PostgresServer

    srv, reason = PostgresServer.start(tmp_path_factory.mktemp("pg"))
    if srv is None:
        pytest.skip(reason)
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path):
    stores = []

    def make(max_attempts: int = 3):
        if request.param == "sqlite":
            store = SQLiteStore(tmp_path / "jobs.sqlite3", max_attempts=max_attempts)
        else:
            from lightx2v.server.pg_store import PostgresStore

            pg = request.getfixturevalue("postgres")
            if not stores:
                _db_count[0] += 1
                make.url = pg.new_database(f"t{_db_count[0]}")
            store = PostgresStore(make.url, max_attempts=max_attempts)
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()


REQ = {"prompt": "x"}


def test_lifecycle(make_store):
    store = make_store()
    job = store.create(REQ, {"model": "m"})
    assert job.status == "queued" and job.request == REQ and job.meta == {"model": "m"}
    mine = store.claim("w1", lease_s=30)
    assert mine.id == job.id and mine.status == "in_progress" and mine.attempts == 1 and mine.worker == "w1"
    assert store.claim("w2", lease_s=30) is None  # nothing else to do: a running job is not handed out twice
    assert store.progress(mine, 50, 30) and store.get(job.id).progress == 50
    assert store.complete(mine, f"{job.id}.mp4")
    done = store.get(job.id)
    assert done.status == "completed" and done.progress == 100 and done.output == f"{job.id}.mp4"
    assert store.counts()["completed"] == 1


def test_fail_and_cancel(make_store):
    store = make_store()
    a, b = store.create(REQ, {}), store.create(REQ, {})
    ja = store.claim("w", 30)
    assert store.fail(ja, "internal_error", "boom")
    assert (store.get(a.id).status, store.get(a.id).error_message) == ("failed", "boom")
    jb = store.claim("w", 30)
    assert store.cancel(b.id).status == "in_progress" and store.cancel(b.id) is None
    assert not store.progress(jb, 10, 30) and not store.complete(jb, "x.mp4")  # the worker learns it lost the job
    assert store.get(b.id).status == "cancelled"


def test_an_expired_lease_is_taken_over_then_failed_after_max_attempts(make_store):
    store = make_store(max_attempts=2)
    job = store.create(REQ, {})
    first = store.claim("dead", lease_s=0.05)
    time.sleep(0.1)
    second = store.claim("alive", lease_s=0.05)
    assert second.id == job.id and second.attempts == 2 and second.worker == "alive"
    assert not store.progress(first, 10, 30)  # the dead worker's writes no longer count
    time.sleep(0.1)
    assert store.claim("third", lease_s=30) is None
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error_code == "worker_lost" and "2 times" in failed.error_message


def test_requeue_and_orphans(make_store):
    store = make_store()
    job = store.create(REQ, {})
    mine = store.claim("w", 30)
    assert store.requeue(mine)
    again = store.get(job.id)
    assert (again.status, again.attempts) == ("queued", 0)
    store.claim("w", 30)
    assert store.requeue_orphans() == 1 and store.get(job.id).status == "queued"


def test_queue_bound_and_pagination(make_store):
    store = make_store()
    ids = [store.create(REQ, {}, max_queue=3).id for _ in range(3)]
    with pytest.raises(QueueFull):
        store.create(REQ, {}, max_queue=3)
    page, more = store.list(limit=2, order="asc")
    assert [j.id for j in page] == ids[:2] and more
    page, more = store.list(after=ids[1], order="asc")
    assert [j.id for j in page] == ids[2:] and not more
    page, _ = store.list(order="desc")
    assert [j.id for j in page] == ids[::-1]
    assert store.list(after="video_missing") == ([], False)


def test_concurrent_claims_hand_each_job_out_once(make_store):
    store = make_store()
    ids = {store.create(REQ, {}).id for _ in range(24)}
    got, lock = [], threading.Lock()

    def worker(name):
        mine = make_store()  # its own connections, as another server process would have
        while (job := mine.claim(name, 30)) is not None:
            with lock:
                got.append(job.id)
            mine.complete(job, "x.mp4")

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # every job once, none twice
    assert store.counts()["completed"] == 24
