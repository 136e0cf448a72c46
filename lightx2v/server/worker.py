"""The worker: one thread per server process that loads the model once and runs jobs one at a time.

    load the pipeline (ready)  ->  loop: claim the oldest job (store) -> run it -> complete / fail

A thread, not a process: a `kill -9` takes the server and its worker down together, and the
store (not memory) says what was running, so a restart runs it again. While a job runs, a
heartbeat renews its lease and every denoising step records progress; a step answer of False
(the job was deleted, its lease was taken over, or the server is shutting down) stops the loop
through the pipeline's callback (`GenerationCancelled`, nothing written). On shutdown the running
job is given back to the queue uncounted. The output is written by the pipeline atomically
(temp file + rename) as `<data dir>/videos/<job id>.mp4`; an image job (POST /v1/images/generations,
meta kind "image") as `<data dir>/images/<job id>.png` (n images: `<job id>_0.png` ...).

Per-job LoRAs (`--lora-dir`; lightx2v.server.loras): before a job runs, the worker makes the
pipeline's dynamic LoRAs exactly the job's (`meta["loras"]`, names resolved in the offered files),
or none, with `set_lora`; a job with the same set as the previous one switches nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from lightx2v.server.store import Job, SQLJobStore

log = logging.getLogger("lightx2v.server")


@dataclasses.dataclass
class Stats:
    """In-process numbers for /metrics (the store holds the per-status counts)."""

    step_seconds_sum: float = 0.0
    step_count: int = 0
    jobs_run: int = 0
    current: Optional[str] = None


def remove_outputs(videos: Path, job_id: str) -> None:
    """A job's files: the video and the pipeline's metadata sidecar (`<video>.json`), or its images
    (in the sibling images/ folder); names made from the store's id, never from a request."""
    for name in (f"{job_id}.mp4", f"{job_id}.mp4.json"):
        (videos / name).unlink(missing_ok=True)
    images = videos.parent / "images"
    if images.is_dir():
        for path in [*images.glob(f"{job_id}.*"), *images.glob(f"{job_id}_*")]:
            path.unlink(missing_ok=True)


class Worker(threading.Thread):
    def __init__(self, store: SQLJobStore, load: Callable[[], object], data_dir: Path, lease_s: float = 60.0,
                 poll_s: float = 0.2, loras=None):
        super().__init__(name="lightx2v-worker", daemon=True)
        self.store, self.load, self.lease_s, self.poll_s = store, load, lease_s, poll_s
        self.loras = loras  # server.loras.LoraLibrary (--lora-dir) or None
        # the (name, strength) pairs active as dynamic LoRAs; None: unknown (a switch failed half-way)
        self.active_loras: Optional[tuple] = ()
        self.videos = Path(data_dir) / "videos"
        self.worker_id = f"{uuid.uuid4().hex[:12]}"
        self.pipe = None
        self.ready = threading.Event()
        self.load_error: Optional[str] = None
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.stats = Stats()

    # -- thread body
    def run(self) -> None:
        try:
            self.pipe = self.load()
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the log, the server stays up
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the model did not load", extra={"job": None})
            return
        self.ready.set()
        log.info("model loaded; worker %s takes jobs", self.worker_id, extra={"job": None})
        while not self.stopping.is_set():
            job = self._claim()
            if job is None:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            self.run_job(job)

    def _claim(self) -> Optional[Job]:
        try:
            return self.store.claim(self.worker_id, self.lease_s)
        except Exception:  # noqa: BLE001 - a store hiccup (PostgreSQL restarting): retry after a pause
            log.exception("claiming a job failed; retrying", extra={"job": None})
            time.sleep(1.0)
            return None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; the running job goes back to the queue."""
        self.stopping.set()
        self.wake.set()
        if self.is_alive():
            self.join(timeout)

    # -- one job
    def run_job(self, job: Job) -> None:
        from lightx2v.config import SamplingParams
        from lightx2v.errors import GenerationCancelled, LightX2VError

        self.stats.current = job.id
        extra = {"job": job.id}
        log.info("running (attempt %d)", job.attempts, extra=extra)
        meta = job.meta or {}
        out = self.videos / f"{job.id}.mp4"
        if meta.get("kind") == "image":
            out = self.videos.parent / "images" / f"{job.id}.{meta.get('ext', 'png')}"
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, lost), daemon=True)
        beat.start()
        last = [time.perf_counter()]

        def on_step(info) -> bool:
            now = time.perf_counter()
            self.stats.step_seconds_sum += now - last[0]
            self.stats.step_count += 1
            last[0] = now
            pct = min(99, int(100 * (info.step + 1) / max(1, info.num_steps)))
            if self.stopping.is_set() or lost.is_set() or not self.store.progress(job, pct, self.lease_s):
                lost.set()
                return False
            return True

        try:
            self._switch_loras(job)
            params = dataclasses.replace(SamplingParams.from_dict(job.request), output_path=str(out), callback=on_step)
            result = self.pipe.run(params)
            if self.store.complete(job, Path(result.path).name):
                log.info("completed in %.1fs", result.timings.get("total", 0.0), extra=extra)
            else:  # deleted (or taken over) after its last step: its file is not wanted
                remove_outputs(self.videos, job.id)
        except GenerationCancelled:
            if self.stopping.is_set() and self.store.requeue(job):
                log.info("shutting down: job given back to the queue", extra=extra)
            else:
                log.info("stopped: the job was deleted or taken over", extra=extra)
                remove_outputs(self.videos, job.id)
        except LightX2VError as exc:
            self.store.fail(job, "invalid_request" if exc.exit_code == 2 else "generation_failed", str(exc))
            log.warning("failed: %s", exc, extra=extra)
        except Exception as exc:  # noqa: BLE001 - the job fails, the server goes on
            log.exception("failed", extra=extra)
            self.store.fail(job, "internal_error", f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            lost.set()
            beat.join()
            self.stats.jobs_run += 1
            self.stats.current = None

    def _switch_loras(self, job: Job) -> None:
        """Make the pipeline's dynamic LoRAs the job's set (none for a job without); an InputError
        line for a name no longer offered, the pipeline's error for a file that does not fit."""
        from lightx2v.errors import InputError
        from lightx2v.server.loras import describe_pairs

        wanted = tuple((str(n), float(s)) for n, s in (job.meta or {}).get("loras") or ())
        if wanted == self.active_loras or (self.loras is None and not wanted):
            return
        if self.loras is None:
            raise InputError("this job asks for LoRAs but the server offers none now (start it with --lora-dir)",
                             field="lora")
        pairs = self.loras.paths(wanted)
        self.active_loras = None  # until set_lora returns: a failure may have switched some DiTs
        self.pipe.set_lora(pairs)
        self.active_loras = wanted
        log.info("LoRAs for this job: %s", describe_pairs(wanted) or "none", extra={"job": job.id})

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        # a step can take longer than a lease (a 720p VAE decode): renew it on a clock, not per step
        while not done.wait(self.lease_s / 3):
            try:
                if not self.store.heartbeat(job, self.lease_s):
                    done.set()
            except Exception:  # noqa: BLE001 - the next beat retries
                log.exception("heartbeat failed", extra={"job": job.id})
