"""Schemathesis fuzzing of the served OpenAPI schema, a bounded number of cases per route: no
answer is a 5xx and none carries a traceback. On a server of its own: a fuzzed request can be a
valid, large job (deleted at once, so the queue does not grow)."""

from __future__ import annotations

import pytest

from tests.server.conftest import ServerProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 (schemathesis brings hypothesis)


@pytest.fixture(scope="module")
def fuzz_server(tiny_model, tmp_path_factory):
    srv = ServerProcess(tiny_model, tmp_path_factory.mktemp("fuzz") / "data", "--max-upload-mb", "1").start()
    yield srv
    srv.kill()  # a fuzzed job may be a large one: no need to let it finish


def test_no_server_errors(fuzz_server):
    shared_server = fuzz_server
    import httpx
    from hypothesis import given

    schema = schemathesis.openapi.from_url(shared_server.url + "/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/events"):  # a stream that lasts a job; a generated id is a 404 anyway
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=shared_server.url, headers=shared_server.headers(), timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            assert "Traceback" not in response.text
            seen.append(response.status_code)
            body = response.json() if response.headers.get("content-type") == "application/json" else {}
            job = body.get("id") or body.get("task_id") if isinstance(body, dict) else None
            if case.method == "POST" and response.status_code == 200 and job:
                httpx.delete(f"{shared_server.url}/v1/videos/{job}", headers=shared_server.headers())

        fuzz()
    assert len(seen) >= 40 and any(code >= 400 for code in seen)  # it really sent (and got refused) cases
