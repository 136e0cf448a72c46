"""Model paths: a mistyped local path is told from a repo id; the Hub, reached through a local fake
server (no internet here), answers, refuses, or never answers, and each case is one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lightx2v.cli.main import main
from lightx2v.errors import CheckpointError, HubError
from lightx2v.loading import hub
from lightx2v.loading.hub import looks_like_repo_id, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"dim": 64}', "weights.bin": bytes(range(256)) * 4000}


# ---------------------------------------------------------------- local path or repo id


@pytest.mark.parametrize("text, repo", [
    ("Wan-AI/Wan2.1-T2V-1.3B", True), ("owner/name", True),
    ("./owner/name", False), ("../owner/name", False), ("~/owner", False), ("/abs/owner", False),
    ("models/Wan/x", False), ("owner/name/", False), ("Wan2.1-T2V-1.3B", False), ("a--b/c", False),
    ("models/Wan2.1-T2V-1.3b", False),  # models/ is a local folder (made below)
])
def test_repo_id_or_local_path(text, repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_repo_id(text) is repo


@pytest.mark.parametrize("typo, expect", [
    ("models/Wan2.1-T2V-1.3b", "(the folder models exists; close names there: Wan2.1-T2V-1.3B)"),
    ("./modls/Wan2.1-T2V-1.3B", "close names there: models"),
    ("models/a/b/c", "the folder models exists but has nothing named like 'a'"),
    ("Wan2.1-T2V-1.3B", "a Hugging Face repo id is written owner/name"),
])
def test_local_typo_names_what_exists_and_never_contacts_the_hub(typo, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "Wan2.1-T2V-1.3B").mkdir(parents=True)
    monkeypatch.setattr(hub, "fetch", lambda *a, **k: pytest.fail("a local path went to the Hub"))
    with pytest.raises(CheckpointError) as info:
        resolve_model_path(typo)
    assert not isinstance(info.value, HubError) and info.value.exit_code == 2
    assert str(info.value).startswith(f"model folder not found: {typo.removeprefix('./')}") and expect in str(info.value)
    assert main(["info", typo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightx2v: error: model folder not found") and "Hub" not in err


# ---------------------------------------------------------------- a fake Hub


class _FakeHub(BaseHTTPRequestHandler):
    """owner/tiny: two files at commit SHA; owner/down: 503; anything else: 404 RepoNotFound, as the Hub answers."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        json_type = {"Content-Type": "application/json"}
        if path in ("/api/models/owner/tiny", "/api/models/owner/tiny/revision/main"):
            info = {"id": "owner/tiny", "sha": SHA, "siblings": [{"rfilename": f} for f in FILES]}
            return self._send(200, json.dumps(info).encode(), json_type)
        if path == f"/api/models/owner/tiny/tree/{SHA}":
            tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in FILES.items()]
            return self._send(200, json.dumps(tree).encode(), json_type)
        if path.startswith(f"/owner/tiny/resolve/{SHA}/"):
            body = FILES[path.rsplit("/", 1)[1]]
            return self._send(200, body, {"ETag": f'"{hashlib.sha1(body).hexdigest()}"', "X-Repo-Commit": SHA})
        if path.startswith("/api/models/owner/down"):
            return self._send(503, b'{"error": "Service Unavailable"}', json_type)
        self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound", **json_type})


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    # what HF_ENDPOINT sets when huggingface_hub is imported (the CLI test below sets HF_ENDPOINT itself)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a captive portal, a dead proxy)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in held:
        c.close()
    sock.close()


def test_download_says_so_shows_progress_and_reuses_the_cache(fake_hub, tmp_path, capsys):
    got = resolve_model_path("owner/tiny", cache_dir=tmp_path)
    assert got == tmp_path / "models--owner--tiny" / "snapshots" / SHA
    assert {p.name: p.read_bytes() for p in got.iterdir()} == FILES
    err = capsys.readouterr().err
    assert "contacting the Hugging Face Hub for owner/tiny ..." in err
    assert "Fetching 2 files" in err  # huggingface_hub's own progress bar, not turned off
    assert resolve_model_path("owner/tiny", cache_dir=tmp_path, progress=False) == got
    assert capsys.readouterr().err == ""  # progress=False: no line, no bar


def test_unreachable_hub_falls_back_to_the_cached_snapshot(fake_hub, tmp_path):
    from huggingface_hub import constants

    got = resolve_model_path("owner/tiny", cache_dir=tmp_path, progress=False)
    fake_hub.shutdown()
    fake_hub.server_close()  # now the port refuses connections
    with pytest.warns(UserWarning, match="could not reach the Hugging Face Hub .*using the cached snapshot of owner/tiny"):
        assert resolve_model_path("owner/tiny", cache_dir=tmp_path, progress=False) == got
    with pytest.raises(HubError, match=r"could not reach the Hugging Face Hub \(http://127.0.0.1:\d+\) for owner/other "
                                       r"\(ConnectError: .*\); check your network or proxy"):
        resolve_model_path("owner/other", cache_dir=tmp_path, progress=False)
    assert constants.ENDPOINT.startswith("http://127.0.0.1")


def test_repo_the_hub_does_not_have(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owners").mkdir()
    with pytest.raises(HubError) as info:
        resolve_model_path("ownr/absent", cache_dir=tmp_path / "cache", progress=False)
    assert str(info.value).startswith("ownr/absent is not a model repo on the Hugging Face Hub (or it is private")
    assert str(info.value).endswith("; not a local folder either (close names here: owners)")
    assert info.value.exit_code == 4


def test_a_failing_hub_is_not_a_network_problem(fake_hub, tmp_path):
    with pytest.raises(HubError, match=r"the Hugging Face Hub \(http://127.0.0.1:\d+\) answered HTTP 503 for owner/down "
                                       r"\(down or overloaded\); try again later"):
        resolve_model_path("owner/down", cache_dir=tmp_path, progress=False)


def test_offline_reads_only_the_cache(fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    got = resolve_model_path("owner/tiny", cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("owner/tiny", cache_dir=tmp_path) == got
    with pytest.raises(HubError, match=r"could not fetch owner/absent: it is not in the Hugging Face cache \(.*\) "
                                       r"and downloads are off \(HF_HUB_OFFLINE is set\); download it once online"):
        resolve_model_path("owner/absent", cache_dir=tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubError, match=r"downloads are off \(local_files_only=True\)"):
        resolve_model_path("owner/absent", cache_dir=tmp_path, local_files_only=True)


def test_a_hub_that_never_answers_times_out(silent_server, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(HubError) as info:
        resolve_model_path("owner/silent", cache_dir=tmp_path, timeout=1)
    elapsed = time.monotonic() - start
    assert str(info.value).startswith(f"the Hugging Face Hub ({silent_server}) did not answer within 1 s for "
                                      "owner/silent; check your network or proxy, wait longer with HF_HUB_ETAG_TIMEOUT")
    assert "hf download owner/silent --local-dir DIR" in str(info.value)
    # 1 s for our request (+ up to 3 s for huggingface_hub's own once-a-day registry request)
    assert elapsed < 10, elapsed
    assert "contacting the Hugging Face Hub for owner/silent ..." in capsys.readouterr().err


def test_cli_on_a_silent_hub_exits_4_within_the_timeout(silent_server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": silent_server, "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lightx2v.cli.main", "info", "owner/silent"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    elapsed = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 4, proc.stderr
    assert lines[0] == "contacting the Hugging Face Hub for owner/silent ..."
    assert lines[-1].startswith(f"lightx2v: error: the Hugging Face Hub ({silent_server}) did not answer within 2 s")
    assert len(lines) == 2 and "Traceback" not in proc.stderr
    assert elapsed < 30, elapsed  # interpreter start + 2 s (+ huggingface_hub's 3 s registry request)
