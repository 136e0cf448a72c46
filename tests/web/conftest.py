"""The real web UI process for the tests: `python -m lightx2v.web.ui` on a free 127.0.0.1 port with
the tiny random Wan2.1 checkpoint on the CPU (tests/server/conftest.py's approach: a job of
16x16 pixels takes about a second).

`UiProcess` starts it, waits for the HTTP service's /ready (the page and the API share the
process), and stops it with SIGTERM; its log is kept for assertions. One process per test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.server.conftest import ServerProcess  # noqa: E402 (after the skips above)


class UiProcess(ServerProcess):
    """The UI process: the server's start / stop / log, another module (the page and the API share it)."""

    module = "lightx2v.web.ui"
    env = {"GRADIO_ANALYTICS_ENABLED": "False"}

    def __init__(self, model: Path, data_dir: Path, *extra: str):
        super().__init__(model, data_dir, *extra, api_key=None)
        self.log_path = data_dir.parent / f"ui-{self.port}.log"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from lightx2v.models.wan.tiny import write_official_checkpoint

    return write_official_checkpoint(tmp_path_factory.mktemp("ui-model") / "Wan2.1-T2V-tiny")
