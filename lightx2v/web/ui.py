"""`python -m lightx2v.web.ui` / `lightx2v ui`: the web UI, with the HTTP API beside it.

    python -m lightx2v.web.ui --model-path PATH [--host 127.0.0.1] [--port 7860] [--share]

Startup is `lightx2v serve`'s (lightx2v.server.cli): the same model and engine flags as
`generate`, the checkpoint detected before anything loads, the same durable job store and the
same worker thread (the model loads once, in the background). The Gradio page (lightx2v.web.app)
is mounted at / on the service's FastAPI app, so one process serves the page and the HTTP API
(/v1/videos, /v1/tasks, /ready), all on one queue and one GPU; a job outlives the page that
started it. `--share` asks Gradio for a public link instead; it then serves the page only (the
worker still runs in this process).

Gradio is an optional dependency (the `ui` extra): without it this command says the pip command
and exits 2, and nothing else of lightx2v imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

HELP = "a web UI (Gradio) for every task and option of the checkpoint, with the HTTP API beside it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightx2v.cli.generate import add_engine_arguments, add_model_arguments
    from lightx2v.server.cli import add_store_arguments

    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="a public gradio.live link (the page only, not the HTTP API)")
    add_store_arguments(p, log_format="text")  # the HTTP service's store flags: the same job queue
    add_engine_arguments(p)


def require_gradio() -> None:
    """Gradio (the `ui` extra) and the server's packages are installed, else one line with the pip command."""
    from lightx2v.server.cli import require_packages

    require_packages(("gradio", "fastapi", "uvicorn", "multipart"), "the web UI", "ui")


def run(args: argparse.Namespace) -> int:
    from lightx2v.errors import InputError
    from lightx2v.server import cli as serve

    if args.model_path is None:
        raise InputError("--model-path is required")
    for flag, value in (("--max-queue", args.max_queue), ("--max-upload-mb", args.max_upload_mb),
                        ("--max-attempts", args.max_attempts)):
        if value <= 0:
            raise InputError(f"{flag} must be positive, got {value}")
    if not 0 <= args.port < 65536:
        raise InputError(f"--port must be 0-65535, got {args.port}")
    if not args.lease_seconds > 0:
        raise InputError(f"--lease-seconds must be positive, got {args.lease_seconds}")
    require_gradio()
    serve.setup_logging(args.log_format)
    from lightx2v.api import planned
    from lightx2v.cli.generate import detect_from_args

    mc, engine = detect_from_args(args, progress=False)
    engine, plan = planned(mc, engine, args.max_vram, args.max_ram)
    log = logging.getLogger("lightx2v.server")
    if plan is not None:
        log.info(plan.describe(), extra={"job": None})
    data_dir = Path(args.data_dir).resolve()
    (data_dir / "videos").mkdir(parents=True, exist_ok=True)
    state = serve.build_state(args, mc, engine, data_dir)
    launch(state, engine, args)
    return 0


def launch(state, engine, args) -> None:
    """Serve the page (and, without --share, the HTTP API) until Ctrl-C / SIGTERM."""
    import gradio as gr

    from lightx2v.web.app import build_blocks

    blocks = build_blocks(state, engine)
    blocks.queue(default_concurrency_limit=None)
    videos = str(state.data_dir / "videos")
    images = str(state.data_dir / "images")  # an image model's results (lightx2v.web.image_app)
    (state.data_dir / "images").mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("lightx2v.server")
    if args.share:
        state.worker.start()
        try:
            blocks.launch(server_name=args.host, server_port=args.port, share=True, allowed_paths=[videos, images],
                          max_file_size=f"{args.max_upload_mb}mb", footer_links=["api"])
        finally:
            state.worker.stop()
        return
    import uvicorn

    from lightx2v.server.app import create_app

    app = gr.mount_gradio_app(create_app(state), blocks, path="/", allowed_paths=[videos, images],
                              max_file_size=f"{args.max_upload_mb}mb", footer_links=["api"], show_error=True)
    log.info("web UI on http://%s:%d/ (HTTP API under /v1)", args.host, args.port, extra={"job": None})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m lightx2v.web.ui`: `lightx2v ui` with the same flags and errors."""
    from lightx2v.cli.main import main as cli_main

    return cli_main(["ui", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
