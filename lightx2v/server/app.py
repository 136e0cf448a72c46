"""The FastAPI application: state, limits, authentication, errors, and the operations routes.

`create_app(state)` mounts the OpenAI Videos routes (openai_routes.py), the OpenAI Images routes of an
image model (image_routes.py), LightX2V's task routes
(task_routes.py), GET /v1/loras (loras.py) and /health, /ready, /metrics here. Before any route
runs, a small ASGI layer bounds the request body (Content-Length over the limit, or a stream that grows past it: 413)
and, with an API key, checks `Authorization: Bearer` on every /v1 route (401). Every error is a
JSON body `{"error": {"message", "type", "param", "code"}, "detail"}`, never a traceback: a
request that fails validation names the field; an unexpected exception is logged with its
traceback and answered 500 with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
from pathlib import Path
from typing import Optional

from lightx2v.server.requests import ApiError, Served
from lightx2v.server.store import SQLJobStore
from lightx2v.server.worker import Worker

log = logging.getLogger("lightx2v.server")


@dataclasses.dataclass
class ServerState:
    store: SQLJobStore
    worker: Worker
    served: Served
    data_dir: Path
    api_key: Optional[str] = None
    max_queue: int = 100
    max_body_bytes: int = 50 * 2**20
    retry_after_s: int = 10

    def video_path(self, job) -> Optional[Path]:
        """The job's output file: the data dir + the name the worker gave it (never request input)."""
        return None if not job.output else self.data_dir / "videos" / Path(job.output).name


def error_response(exc: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class Guard:
    """ASGI middleware: body size bound and bearer-token check, before FastAPI parses anything."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.state.api_key and scope["path"].startswith("/v1"):
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.state.api_key.encode()):
                err = ApiError(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                return await _send_error(send, err)
        limit = self.state.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_error(send, _too_large(limit))
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, _too_large(limit))


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit // 2**20} MiB (--max-upload-mb)", code="request_too_large")


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(state: ServerState):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lightx2v import __version__
    from lightx2v.server import image_routes, loras, ops_routes, openai_routes, task_routes

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if not state.worker.is_alive() and not state.worker.stopping.is_set():
            state.worker.start()
        yield
        log.info("shutting down: stopping the worker after its current step", extra={"job": state.worker.stats.current})
        state.worker.stop()
        state.store.close()

    app = FastAPI(title="lightx2v", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible video generation (and LightX2V's task API) over a durable job queue.")
    app.state.lx = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        msg = f"{field or 'request'}: {first.get('msg', 'invalid value')}"
        return error_response(ApiError(400, msg, param=field, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(ApiError(exc.status_code, str(exc.detail), code="http_error",
                                       headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path, extra={"job": None})
        return error_response(ApiError(500, "internal server error (logged on the server)", code="internal_error"))

    app.include_router(openai_routes.router(state))
    app.include_router(image_routes.router(state))  # POST /v1/images/generations (an image model)
    app.include_router(task_routes.router(state))
    app.include_router(ops_routes.router(state))
    app.include_router(loras.router(state))  # GET /v1/loras (--lora-dir)
    app.add_middleware(Guard, state=state)
    return app
