"""The job store on PostgreSQL: several server processes, on several machines, share one queue.

The same SQL as SQLite (lightx2v.server.store.SQLJobStore) through psycopg 3, one connection per
thread; a claim locks its candidate row with `FOR UPDATE SKIP LOCKED`, so two workers claiming at
once get two different jobs and never wait on each other. A crashed server's job comes back when
its lease runs out (no process can tell that another machine's worker is dead sooner).
"""

from __future__ import annotations

import threading

from lightx2v.server.store import INDEXES, SCHEMA, SQLJobStore


class PostgresStore(SQLJobStore):
    placeholder = "%s"
    single_process = False

    def __init__(self, url: str, max_attempts: int = 3):
        super().__init__(max_attempts)
        try:
            import psycopg
        except ImportError:
            from lightx2v.errors import InputError

            raise InputError("--store postgresql:// needs psycopg: pip install 'lightx2v[server]'", field="store") from None
        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        try:
            self.init_schema()
        except psycopg.OperationalError as exc:
            from lightx2v.errors import InputError

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot connect to the PostgreSQL store: {first}", field="store") from None

    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=False)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _begin(self, cur) -> None:
        pass  # psycopg opens a transaction at the first statement

    def _claim_candidate(self, cur, now: float):
        cur.execute("SELECT id, attempts FROM jobs WHERE status = 'queued' "
                    "OR (status = 'in_progress' AND lease_until < %s) ORDER BY created_at, id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED", (now,))
        return cur.fetchone()

    def init_schema(self) -> None:
        # two servers starting at once may both create the table: serialize on an advisory lock
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7422511)")
            cur.execute(SCHEMA)
            for stmt in INDEXES:
                cur.execute(stmt)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing at shutdown, nothing to report
                    pass
            self._all.clear()
