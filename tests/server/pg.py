"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl (Debian's postgresql package) in a
temporary folder, listening on a free 127.0.0.1 port; None (with the reason) when the binaries
are absent or cannot run. As root, PostgreSQL runs as the `postgres` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.server.conftest import free_port


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    paths = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return paths[-1] if paths else None


class PostgresServer:
    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.data = root / "pgdata"
        self.prefix: list[str] = []
        self.own_root = False

    def cleanup(self) -> None:
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    def start(cls, root: Path) -> tuple["PostgresServer | None", str]:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not (initdb and pg_ctl):
            return None, "PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        srv = cls(root)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                return None, "running as root and there is no postgres user to run PostgreSQL as"
            # pytest's temp folders are root's (0700): PostgreSQL gets a folder of its own
            root = srv.root = Path(tempfile.mkdtemp(prefix="lightx2v-pg-"))
            srv.data = root / "pgdata"
            srv.own_root = True
            os.chown(root, user.pw_uid, user.pw_gid)
            srv.prefix = ["runuser", "-u", "postgres", "--"]
        try:
            srv._run([initdb, "-D", str(srv.data), "-U", "lightx2v", "--auth=trust", "-E", "UTF8"])
            srv._run([pg_ctl, "-D", str(srv.data), "-l", str(root / "pg.log"), "-w", "-t", "60", "-o",
                      f"-p {srv.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        except subprocess.CalledProcessError as exc:
            why = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            srv.cleanup()
            return None, f"could not start PostgreSQL ({' '.join(exc.cmd[-3:])}): {why[-1] if why else exc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            srv.cleanup()
            return None, f"could not start PostgreSQL: {exc}"
        srv.pg_ctl = pg_ctl
        return srv, ""

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(self.prefix + cmd, check=True, capture_output=True, timeout=120)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://lightx2v@127.0.0.1:{self.port}/{db}"

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
            pass
        self.cleanup()
