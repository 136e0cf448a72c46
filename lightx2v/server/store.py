"""The durable job store: one small interface, SQLite by default, PostgreSQL to share a queue.

The store is the truth about every job; the HTTP routes and the worker only read and change rows.
A job's row holds its request (SamplingParams as JSON, images as base64 bytes), status, progress,
timings, error and output file name (relative to the data dir, made from the server's own id).

Lifecycle: queued -> in_progress -> completed | failed; `cancelled` when a client deletes it
(the row stays, hidden from the OpenAI routes, so a late worker sees it and stops).

Claiming is atomic (SQLite: one `BEGIN IMMEDIATE` transaction; PostgreSQL:
`SELECT ... FOR UPDATE SKIP LOCKED`), so no job runs twice at once. A claim takes a lease
(`lease_until`), renewed by the worker's heartbeat; a job whose lease ran out (its server was
killed) is claimable again, its `attempts` counted: past `max_attempts` it is failed with a reason
instead. Every write of a running job names its worker and attempt: a worker that lost its job
(lease taken over, job deleted) gets False back and stops.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
ACTIVE = ("queued", "in_progress")
COLUMNS = ("id", "created_at", "status", "progress", "request", "meta", "started_at", "completed_at",
           "error_code", "error_message", "output", "attempts", "worker", "lease_until", "updated_at")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  created_at DOUBLE PRECISION NOT NULL,
  status TEXT NOT NULL,
  progress INTEGER NOT NULL DEFAULT 0,
  request TEXT NOT NULL,
  meta TEXT NOT NULL,
  started_at DOUBLE PRECISION,
  completed_at DOUBLE PRECISION,
  error_code TEXT,
  error_message TEXT,
  output TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  worker TEXT,
  lease_until DOUBLE PRECISION,
  updated_at DOUBLE PRECISION NOT NULL
)"""
INDEXES = ("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at)",
           "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id)")


class QueueFull(Exception):
    """The queue holds `max_queue` active jobs already (the route answers 429)."""


@dataclasses.dataclass(frozen=True)
class Job:
    id: str
    created_at: float
    status: str
    progress: int
    request: dict           # SamplingParams.to_dict() without output_path
    meta: dict              # what the API echoes: model, seconds, size, prompt, api ("openai" | "task")
    started_at: Optional[float] = None
    completed_at: Optional[float] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    output: Optional[str] = None    # file name under the data dir's videos/ (never from a request)
    attempts: int = 0
    worker: Optional[str] = None
    lease_until: Optional[float] = None
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row) -> "Job":
        d = dict(zip(COLUMNS, row))
        d["request"] = json.loads(d["request"])
        d["meta"] = json.loads(d["meta"])
        return cls(**d)


def new_job_id() -> str:
    """An unguessable id (144 random bits), safe as a file name: [A-Za-z0-9_-]."""
    return "video_" + secrets.token_urlsafe(18)


class SQLJobStore:
    """The store's logic in SQL both databases speak; subclasses give connections and the claim.

    Placeholders are written `?` and rewritten for drivers that use `%s`."""

    placeholder = "?"

    def __init__(self, max_attempts: int = 3):
        self.max_attempts = max_attempts

    # -- the driver-specific part
    def _connect(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _begin(self, cur) -> None:
        cur.execute("BEGIN")

    def _end(self, conn, ok: bool) -> None:
        conn.commit() if ok else conn.rollback()

    def _claim_candidate(self, cur, now: float):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- plumbing
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _tx(self):
        return _Tx(self)

    def _query(self, sql: str, args: tuple = ()) -> list:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return cur.fetchall()

    def _execute(self, sql: str, args: tuple = ()) -> int:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return cur.rowcount

    def init_schema(self) -> None:
        with self._tx() as cur:
            cur.execute(SCHEMA)
            for stmt in INDEXES:
                cur.execute(stmt)

    # -- the interface
    def create(self, request: dict, meta: dict, max_queue: Optional[int] = None) -> Job:
        """A new queued job (QueueFull when `max_queue` jobs are active already)."""
        now = time.time()
        job_id = new_job_id()
        with self._tx() as cur:
            if max_queue is not None:
                cur.execute(self._sql("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'in_progress')"))
                if cur.fetchone()[0] >= max_queue:
                    raise QueueFull(max_queue)
            cur.execute(self._sql("INSERT INTO jobs (id, created_at, status, progress, request, meta, attempts, updated_at) "
                                  "VALUES (?, ?, 'queued', 0, ?, ?, 0, ?)"),
                        (job_id, now, json.dumps(request), json.dumps(meta), now))
        return self.get(job_id)

    def get(self, job_id: str) -> Optional[Job]:
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list(self, after: Optional[str] = None, limit: int = 20, order: str = "desc",
             statuses: tuple = ("queued", "in_progress", "completed", "failed")) -> tuple[list[Job], bool]:
        """Jobs by creation time, `after` the job of that id (cursor); (jobs, has_more)."""
        marks = ", ".join("?" for _ in statuses)
        where, args = [f"status IN ({marks})"], list(statuses)
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        if after is not None:
            ref = self.get(after)
            if ref is None:
                return [], False
            where.append(f"(created_at {op} ? OR (created_at = ? AND id {op} ?))")
            args += [ref.created_at, ref.created_at, ref.id]
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE {' AND '.join(where)} "
                           f"ORDER BY created_at {direction}, id {direction} LIMIT ?", tuple(args) + (limit + 1,))
        jobs = [Job.from_row(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status, zeros included)."""
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self._query("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[status] = int(n)
        return out

    def claim(self, worker: str, lease_s: float) -> Optional[Job]:
        """The oldest claimable job, now in_progress for `worker` (None: nothing to do). A job
        whose lease ran out is taken over, or failed when it used up its attempts."""
        while True:
            now = time.time()
            with self._tx() as cur:
                row = self._claim_candidate(cur, now)
                if row is None:
                    return None
                job_id, attempts = row
                if attempts >= self.max_attempts:
                    cur.execute(self._sql(
                        "UPDATE jobs SET status = 'failed', error_code = 'worker_lost', error_message = ?, "
                        "completed_at = ?, updated_at = ?, worker = NULL, lease_until = NULL WHERE id = ?"),
                        (f"the server running this job stopped {attempts} times before it finished; not retried",
                         now, now, job_id))
                    continue
                cur.execute(self._sql(
                    "UPDATE jobs SET status = 'in_progress', worker = ?, lease_until = ?, attempts = attempts + 1, "
                    "started_at = ?, progress = 0, updated_at = ? WHERE id = ?"),
                    (worker, now + lease_s, now, now, job_id))
            return self.get(job_id)

    def _mine(self) -> str:
        return "id = ? AND worker = ? AND attempts = ? AND status = 'in_progress'"

    def heartbeat(self, job: Job, lease_s: float) -> bool:
        now = time.time()
        return self._execute(f"UPDATE jobs SET lease_until = ? WHERE {self._mine()}",
                             (now + lease_s, job.id, job.worker, job.attempts)) == 1

    def progress(self, job: Job, progress: int, lease_s: float) -> bool:
        """Record progress (and renew the lease); False: the job is no longer this worker's."""
        now = time.time()
        return self._execute(f"UPDATE jobs SET progress = ?, lease_until = ?, updated_at = ? WHERE {self._mine()}",
                             (int(progress), now + lease_s, now, job.id, job.worker, job.attempts)) == 1

    def complete(self, job: Job, output: str) -> bool:
        now = time.time()
        return self._execute(f"UPDATE jobs SET status = 'completed', progress = 100, output = ?, completed_at = ?, "
                             f"updated_at = ?, lease_until = NULL WHERE {self._mine()}",
                             (output, now, now, job.id, job.worker, job.attempts)) == 1

    def fail(self, job: Job, code: str, message: str) -> bool:
        now = time.time()
        return self._execute(f"UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, completed_at = ?, "
                             f"updated_at = ?, lease_until = NULL WHERE {self._mine()}",
                             (code, message[:2000], now, now, job.id, job.worker, job.attempts)) == 1

    def requeue(self, job: Job) -> bool:
        """Give a running job back (graceful shutdown): queued again, this attempt not counted."""
        now = time.time()
        return self._execute(f"UPDATE jobs SET status = 'queued', progress = 0, attempts = attempts - 1, worker = NULL, "
                             f"lease_until = NULL, updated_at = ? WHERE {self._mine()}",
                             (now, job.id, job.worker, job.attempts)) == 1

    def requeue_orphans(self) -> int:
        """Every in_progress job back to the queue, its attempt counted (a store used by one
        process only, after a crash: none of them can be running)."""
        now = time.time()
        return self._execute("UPDATE jobs SET status = 'queued', progress = 0, worker = NULL, lease_until = NULL, "
                             "updated_at = ? WHERE status = 'in_progress'", (now,))

    def cancel(self, job_id: str) -> Optional[Job]:
        """Mark a job cancelled (any status); its old row, or None if there is none or it was
        cancelled already. The caller removes its file; a running worker sees it at its next step."""
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?"), (job_id,))
            row = cur.fetchone()
            if row is None or row[2] == "cancelled":
                return None
            now = time.time()
            cur.execute(self._sql("UPDATE jobs SET status = 'cancelled', lease_until = NULL, completed_at = ?, "
                                  "updated_at = ? WHERE id = ?"), (now, now, job_id))
        return Job.from_row(row)

    def close(self) -> None:
        pass


class _Tx:
    """One transaction on the calling thread's connection: commit on success, roll back on error."""

    def __init__(self, store: SQLJobStore):
        self.store = store

    def __enter__(self):
        self.conn = self.store._connect()
        self.cur = self.conn.cursor()
        self.store._begin(self.cur)
        return self.cur

    def __exit__(self, kind, exc, tb):
        try:
            self.store._end(self.conn, kind is None)
        finally:
            self.cur.close()
        return False


class SQLiteStore(SQLJobStore):
    """SQLite in WAL mode, one connection per thread. One server process per database: the data
    dir's lock file (lightx2v.server.app) keeps a second one out, so after a crash every
    in_progress job is an orphan (`requeue_orphans`)."""

    single_process = True

    def __init__(self, path: str | Path, max_attempts: int = 3):
        super().__init__(max_attempts)
        self.path = str(path)
        self._local = threading.local()
        conn = self._connect()
        conn.execute("PRAGMA journal_mode=WAL")
        self.init_schema()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, never corrupt
            self._local.conn = conn
        return conn

    def _end(self, conn, ok: bool) -> None:
        conn.execute("COMMIT" if ok else "ROLLBACK")

    def _begin(self, cur) -> None:
        cur.execute("BEGIN IMMEDIATE")  # the write lock up front: a claim cannot interleave with another

    def _claim_candidate(self, cur, now: float):
        cur.execute("SELECT id, attempts FROM jobs WHERE status = 'queued' "
                    "OR (status = 'in_progress' AND lease_until < ?) ORDER BY created_at, id LIMIT 1", (now,))
        return cur.fetchone()


def open_store(spec: str, data_dir: Path, max_attempts: int = 3) -> SQLJobStore:
    """`sqlite` (the data dir's jobs.sqlite3), a path to a .sqlite3 file, or a postgresql:// URL."""
    if spec.startswith(("postgresql://", "postgres://")):
        from lightx2v.server.pg_store import PostgresStore

        return PostgresStore(spec, max_attempts=max_attempts)
    if spec == "sqlite":
        return SQLiteStore(Path(data_dir) / "jobs.sqlite3", max_attempts=max_attempts)
    from lightx2v.errors import InputError

    raise InputError(f"--store must be sqlite or a postgresql://user@host/db URL, got {spec!r}", field="store")

