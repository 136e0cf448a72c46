"""The real server process for the tests: `python -m lightx2v.server` on a free 127.0.0.1 port, with a
tiny random Wan2.1 checkpoint on the CPU (a job of 16x16 pixels takes well under a second).

`ServerProcess` starts it, waits for /ready, and stops it with SIGTERM (graceful) or SIGKILL
(crash); its stderr (JSON log lines) is kept for assertions. Each test module shares one server
(module-scoped fixtures), so the directory runs in a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
# small jobs: 16x16 pixels, one frame (an mp4 of 1 frame) or 5, one or two steps
SMALL = {"size": "16x16", "num_frames": "1", "num_inference_steps": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    module = "lightx2v.server"  # what `python -m` runs (tests/web: the UI, which serves the same API)
    env: dict = {}

    def __init__(self, model: Path, data_dir: Path, *extra: str, api_key: str | None = API_KEY):
        self.model, self.data_dir, self.extra, self.api_key = model, data_dir, list(extra), api_key
        self.port = free_port()
        self.proc = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kw) -> "httpx.Client":
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=30, **kw)

    def start(self, timeout: float = 120) -> "ServerProcess":
        cmd = [sys.executable, "-m", self.module, "--model-path", str(self.model), "--device", "cpu",
               "--dtype", "fp32", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.log_file = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

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

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log_file.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def wait_for(client, video_id: str, statuses=("completed", "failed"), timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/videos/{video_id}").json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{video_id} not in {statuses} after {timeout}s: {body}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from lightx2v.models.wan.tiny import write_official_checkpoint

    return write_official_checkpoint(tmp_path_factory.mktemp("server-model") / "Wan2.1-T2V-tiny")


@pytest.fixture(scope="session")
def shared_server(tiny_model, tmp_path_factory):
    """One server for every module that needs no special flags (a start costs ~10 s on two
    loaded cores: torch and the model's imports). Uploads are bounded at 1 MiB; two LoRAs are
    offered per job (--lora-dir: test_loras.py), which jobs without a `lora` field never touch."""
    from tests.server.test_loras import write_lora_dir

    root = tmp_path_factory.mktemp("shared")
    lora_dir = write_lora_dir(root / "loras")
    srv = ServerProcess(tiny_model, root / "data", "--max-upload-mb", "1", "--lora-dir", str(lora_dir)).start()
    yield srv
    srv.stop()
