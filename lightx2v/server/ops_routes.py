"""Operations: /health (the process answers), /ready (the model is loaded), /metrics (Prometheus text).

/metrics: queue length, jobs by status (from the store: every server sharing it sees the same),
this worker's step time (sum and count) and jobs run, the model's load state and the GPU memory
in use (torch.cuda; 0 on a CPU server). Written by hand: no client library needed.
"""



def metrics_text(state) -> str:
    counts = state.store.counts()
    stats = state.worker.stats
    lines = [
        "# HELP lightx2v_queue_length jobs waiting to run", "# TYPE lightx2v_queue_length gauge",
        f"lightx2v_queue_length {counts['queued']}",
        "# HELP lightx2v_jobs jobs in the store by status", "# TYPE lightx2v_jobs gauge",
        *[f'lightx2v_jobs{{status="{k}"}} {v}' for k, v in counts.items()],
        "# HELP lightx2v_step_seconds denoising step time of this worker", "# TYPE lightx2v_step_seconds summary",
        f"lightx2v_step_seconds_sum {stats.step_seconds_sum:.6f}", f"lightx2v_step_seconds_count {stats.step_count}",
        "# HELP lightx2v_worker_jobs_total jobs this worker ran", "# TYPE lightx2v_worker_jobs_total counter",
        f"lightx2v_worker_jobs_total {stats.jobs_run}",
        "# HELP lightx2v_model_loaded 1 once the model is loaded", "# TYPE lightx2v_model_loaded gauge",
        f"lightx2v_model_loaded {int(state.worker.ready.is_set())}",
        "# HELP lightx2v_gpu_memory_bytes GPU memory allocated by this process", "# TYPE lightx2v_gpu_memory_bytes gauge",
        f"lightx2v_gpu_memory_bytes {_gpu_bytes()}",
    ]
    return "\n".join(lines) + "\n"


def _gpu_bytes() -> int:
    import torch

    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0


def router(state):
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, PlainTextResponse

    r = APIRouter(tags=["operations"])

    @r.get("/health", summary="the process is up")
    def health():
        return {"status": "ok"}

    @r.get("/ready", summary="the model is loaded and jobs are taken")
    def ready():
        w = state.worker
        if w.ready.is_set() and w.is_alive():
            return {"status": "ready", "model": state.served.model_id}
        reason = w.load_error or ("loading the model" if w.is_alive() else "the worker is not running")
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)

    @r.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(metrics_text(state), media_type="text/plain; version=0.0.4")

    return r
