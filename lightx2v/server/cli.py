"""`lightx2v serve`: flags and startup.

Startup order, so that a wrong flag fails in a second: flags -> the server's packages are there
(else one line with the pip command) -> engine config and checkpoint detection (the same code as
`generate`, lightx2v.cli.generate.detect_from_args) -> the data dir (locked for SQLite: one
server per SQLite store) -> the store (jobs left in_progress by a crash go back to the queue) ->
the app on uvicorn. The model loads in the worker thread while the server already answers
(/ready says when it is loaded), once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

HELP = "serve an OpenAI-compatible video API (and LightX2V's task API) over a durable job queue"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightx2v.cli.generate import add_engine_arguments, add_model_arguments

    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; put it behind a proxy)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    add_store_arguments(p, log_format="json")
    add_engine_arguments(p)


def add_store_arguments(p: argparse.ArgumentParser, log_format: str) -> None:
    """The job store's and the HTTP service's flags (shared by `serve` and `ui`)."""
    p.add_argument("--data-dir", default="lightx2v-data", help="where the videos (and the SQLite store) are written")
    p.add_argument("--store", default="sqlite",
                   help="job store: sqlite (in --data-dir) or postgresql://user:pass@host/db (a queue shared by servers)")
    p.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY on /v1 routes (default: $LIGHTX2V_API_KEY, else no key)")
    p.add_argument("--max-queue", type=int, default=100, help="jobs queued or running before new ones get 429")
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest request body (an uploaded image) in MiB")
    p.add_argument("--lease-seconds", type=float, default=60.0,
                   help="a running job's lease, renewed every third of it; a crashed server's job runs again after it")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="times a job is started before a crash-looping job is failed with a reason")
    p.add_argument("--log-format", default=log_format, choices=("json", "text"), help="server log lines on stderr")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="LoRA .safetensors files a request may choose per job by name, with a strength "
                        "(the `lora` field: NAME:STRENGTH[,NAME:STRENGTH]; listed by GET /v1/loras)")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, job id."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), "level": record.levelname.lower(),
               "msg": record.getMessage(), "job": getattr(record, "job", None)}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(kind: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if kind == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s [job %(job)s] %(message)s"))
    log = logging.getLogger("lightx2v.server")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def require_packages(names=("fastapi", "uvicorn", "multipart"), what: str = "the server",
                     extra: str = "server") -> None:
    """One line naming the missing packages of `what` and the pip command of its extra."""
    from lightx2v.errors import InputError

    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(f"{what} needs {', '.join(missing)}: pip install 'lightx2v[{extra}]'")


def lock_data_dir(data_dir: Path):
    """An exclusive lock on the data dir (kept open for the process's life; the kernel drops it
    when the process dies, even by kill -9): one server per SQLite store."""
    import fcntl

    from lightx2v.errors import InputError

    f = open(data_dir / "server.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(f"another server is using {data_dir} (SQLite store); give another --data-dir, "
                         "or --store postgresql://... to share a queue", field="data_dir") from None
    return f


def run(args: argparse.Namespace) -> int:
    from lightx2v.errors import InputError

    if args.model_path is None:
        raise InputError("--model-path is required")
    for flag, value in (("--max-queue", args.max_queue), ("--max-upload-mb", args.max_upload_mb),
                        ("--max-attempts", args.max_attempts), ("--port", args.port)):
        if value < 0 or (value == 0 and flag != "--port"):
            raise InputError(f"{flag} must be positive, got {value}")
    if not args.lease_seconds > 0:
        raise InputError(f"--lease-seconds must be positive, got {args.lease_seconds}")
    require_packages()
    setup_logging(args.log_format)
    from lightx2v.cli.generate import detect_from_args

    mc, engine = detect_from_args(args, progress=False)
    from lightx2v.api import planned

    engine, plan = planned(mc, engine, args.max_vram, args.max_ram)  # for the default (480P-class) request
    if plan is not None:
        logging.getLogger("lightx2v.server").info(plan.describe(), extra={"job": None})
    data_dir = Path(args.data_dir).resolve()
    (data_dir / "videos").mkdir(parents=True, exist_ok=True)
    state = build_state(args, mc, engine, data_dir)
    import uvicorn

    from lightx2v.server.app import create_app

    logging.getLogger("lightx2v.server").info("serving %s on http://%s:%d (store %s)", state.served.model_id,
                                              args.host, args.port, type(state.store).__name__, extra={"job": None})
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
    return 0


def build_state(args, mc, engine, data_dir: Path):
    from lightx2v.api import LightX2V
    from lightx2v.server.app import ServerState
    from lightx2v.server.requests import Served
    from lightx2v.server.store import open_store
    from lightx2v.server.worker import Worker

    loras = None
    if getattr(args, "lora_dir", None):  # before the store: a wrong folder fails at once
        from lightx2v.server.loras import dit_width, scan_lora_dir

        loras = scan_lora_dir(args.lora_dir, dit_width(mc))
        logging.getLogger("lightx2v.server").info("LoRAs offered per job (--lora-dir): %s", ", ".join(loras.names),
                                                  extra={"job": None})
    store = open_store(args.store, data_dir, max_attempts=args.max_attempts)
    if getattr(store, "single_process", False):
        args._lock = lock_data_dir(data_dir)
        n = store.requeue_orphans()
        if n:
            logging.getLogger("lightx2v.server").info("%d job(s) left running by a stopped server are queued again", n,
                                                      extra={"job": None})
    model_id = Path(str(args.model_path).rstrip("/")).name or str(args.model_path)
    worker = Worker(store, lambda: LightX2V.from_model_config(mc, engine, progress=False), data_dir,
                    lease_s=args.lease_seconds, loras=loras)
    api_key = args.api_key if args.api_key is not None else os.environ.get("LIGHTX2V_API_KEY") or None
    return ServerState(store=store, worker=worker, served=Served(model_id=model_id, mc=mc, fps=mc.defaults.fps, loras=loras),
                       data_dir=data_dir, api_key=api_key, max_queue=args.max_queue,
                       max_body_bytes=args.max_upload_mb * 2**20 + 2**16)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m lightx2v.server`: `lightx2v serve` with the same flags and errors."""
    from lightx2v.cli.main import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])
