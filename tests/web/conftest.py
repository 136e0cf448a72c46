"""The real web UI process for the tests: `python -m lightx2v.web.ui` on a free 127.0.0.1 port with
the tiny random Wan2.1 checkpoint on the CPU (tests/server/conftest.py's approach: a job of
16x16 pixels takes about a second).

`UiProcess` starts it, waits for the HTTP service's /ready (the page and the API share the
process), and stops it with SIGTERM; its log is kept for assertions. One process per test module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UiProcess:
    def __init__(self, model: Path, data_dir: Path, *extra: str):
        self.model, self.data_dir, self.extra = model, data_dir, list(extra)
        self.port = free_port()
        self.proc = None
        self.log_path = data_dir.parent / f"ui-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "UiProcess":
        cmd = [sys.executable, "-m", "lightx2v.web.ui", "--model-path", str(self.model), "--device", "cpu",
               "--dtype", "fp32", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log_file = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the UI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the UI was not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from lightx2v.models.wan.tiny import write_official_checkpoint

    return write_official_checkpoint(tmp_path_factory.mktemp("ui-model") / "Wan2.1-T2V-tiny")
