"""The HTTP service: `lightx2v serve` / `python -m lightx2v.server`.

    cli.py            flags (every engine flag of `generate`, shared) and startup
    app.py            FastAPI app, limits, auth, errors          openai_routes.py  the OpenAI Videos API
    task_routes.py    LightX2V's task API                         ops_routes.py     /health /ready /metrics
    requests.py       bodies -> checked SamplingParams            worker.py         the one GPU worker thread
    store.py          the durable job store (SQLite)             pg_store.py       the same on PostgreSQL

Importing this package is light (no torch, no FastAPI): the server's dependencies are the
`server` extra, imported when the server starts. docs/server.md is the operator's guide.
"""
