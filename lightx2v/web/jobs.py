"""The web UI's side of the job queue: submit a request, follow it, cancel it (no gradio here).

The UI does not run the model itself: every generation is a job of the HTTP service's store
(lightx2v.server.store), run by its worker thread in the same process. So the UI and the HTTP
API share one queue and one loaded model, and a job outlives the page that started it.

    submit(state, values, image, last_image) -> (job id, seed)   checked as the HTTP API checks
    submit_images(state, values, images) -> (job id, seed)         an image model's job (t2i / edit)
    follow(state, job id) -> Update ...                            progress until a final status
    active_ui_job(state, api) -> job id | None                     what a reloaded page re-attaches to
    cancel(state, job id)                                          the store's cancel + file removal

The seed is always chosen here (a "random" one drawn before submitting), so the seed that made a
video is known and shown even when the user asked for a random one.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path
from typing import Iterator, Optional

from lightx2v.errors import InputError

# request fields the UI sends (the names of LightX2V.generate's parameters; `lora`: the HTTP API's
# per-job LoRAs, "NAME:STRENGTH,..." of the server's --lora-dir)
FIELDS = ("prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
          "shift", "solver", "seed", "lora")
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Update:
    """One look at a job: status (the store's), progress 0-100, the video path once completed (an
    image job: its image paths), the one-line error once failed."""

    status: str
    progress: int
    video: Optional[Path] = None
    error: Optional[str] = None
    images: tuple = ()

    @property
    def final(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


def pick_seed(seed) -> int:
    """The seed to run with: the given one, or a random one for None / a negative number ("random")."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return secrets.randbelow(MAX_SEED + 1)
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer (or -1 for a random one), got {seed!r:.40}", field="seed") from None
    if not value.is_integer():
        raise InputError(f"seed must be an integer (or -1 for a random one), got {seed!r:.40}", field="seed")
    return secrets.randbelow(MAX_SEED + 1) if value < 0 else int(value)


def read_image(path, name: str) -> Optional[bytes]:
    """An uploaded image (the file gradio saved) as checked bytes; None when there is none."""
    from lightx2v.server.requests import check_image

    if path in (None, ""):
        return None
    return check_image(Path(path).read_bytes(), name)


def request_fields(values: dict) -> dict:
    """The UI's values -> the HTTP service's request fields (None and "" left out: the checkpoint's
    default). Height and width travel as the API's `size`."""
    fields = {k: v for k, v in values.items() if k in FIELDS and k not in ("height", "width") and v not in (None, "")}
    if isinstance(fields.get("solver"), str) and fields["solver"].lower() == "default":
        del fields["solver"]
    h, w = values.get("height"), values.get("width")
    if h not in (None, "") or w not in (None, ""):
        if h in (None, "") or w in (None, ""):
            raise InputError("give both the width and the height (or neither, for the checkpoint's size)", field="size")
        fields["size"] = f"{_int(w, 'width')}x{_int(h, 'height')}"
    return fields


def _int(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r:.40}", field=name) from None
    if not number.is_integer() or number <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r:.40}", field=name)
    return int(number)


def submit(state, values: dict, image=None, last_image=None) -> tuple[str, int]:
    """Check and queue one request; (job id, seed used). A bad request raises InputError with the
    HTTP API's one-line message (the same checks as the CLI: lightx2v.server.requests)."""
    from lightx2v.server.openai_routes import submit as submit_job
    from lightx2v.server.requests import ApiError

    try:
        seed = pick_seed(values.get("seed"))
        fields = {**request_fields(values), "seed": seed}
        job = submit_job(state, fields, read_image(image, "image"), "ui", last_image=read_image(last_image, "last_image"))
    except ApiError as exc:
        raise InputError(exc.message, field=exc.param) from None
    return job.id, seed


# the image page's fields -> the images API's (lightx2v.server.requests.build_image_request)
IMAGE_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "num_inference_steps": "num_inference_steps",
                "guidance_scale": "guidance_scale", "num_images": "n"}


def submit_images(state, values: dict, images=None) -> tuple[str, int]:
    """Check and queue an image model's request (the page's or /generate's); (job id, seed used).
    `images`: the edit model's uploaded files (paths gradio saved; one or several), else None."""
    from lightx2v.server.openai_routes import submit as submit_job
    from lightx2v.server.requests import ApiError

    if isinstance(images, (str, Path)):
        images = [images]
    try:
        seed = pick_seed(values.get("seed"))
        fields = {IMAGE_FIELDS[k]: v for k, v in values.items() if k in IMAGE_FIELDS and v not in (None, "")}
        size = request_fields({"height": values.get("height"), "width": values.get("width")}).get("size")
        fields.update({"seed": seed, **({"size": size} if size else {})})
        data = [read_image(_path(p), "image") for p in images or ()]
        job = submit_job(state, fields, [d for d in data if d is not None] or None, "ui-images")
    except ApiError as exc:
        raise InputError(exc.message, field=exc.param) from None
    return job.id, seed


def _path(item):
    """A gradio file value (a path, or a FileData-like dict / object with .path) -> its path."""
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "path", None) or getattr(item, "name", None) or item


def image_paths(state, job) -> tuple:
    """A completed image job's files (the data dir's images/, named from the job id)."""
    from lightx2v.server.requests import image_file_names

    meta = job.meta or {}
    names = image_file_names(job.id, int(meta.get("n", 1)), meta.get("ext", "png"))
    return tuple(state.data_dir / "images" / name for name in names)


def look(state, job_id: str) -> Update:
    job = state.store.get(job_id)
    if job is None:
        return Update("cancelled", 0, error="the job is gone (deleted)")
    if job.status == "completed" and (job.meta or {}).get("kind") == "image":
        return Update("completed", 100, images=image_paths(state, job))
    if job.status == "completed":
        return Update("completed", 100, video=state.video_path(job))
    if job.status == "failed":
        return Update("failed", job.progress, error=job.error_message or "the job failed")
    if job.status == "cancelled":
        return Update("cancelled", job.progress, error="cancelled")
    return Update(job.status, job.progress)


def follow(state, job_id: str, poll_s: float = 0.1, timeout_s: Optional[float] = None) -> Iterator[Update]:
    """Updates of a job each time its status or progress changes, the last one final."""
    last = None
    start = time.monotonic()
    while True:
        update = look(state, job_id)
        if (update.status, update.progress) != last or update.final:
            last = (update.status, update.progress)
            yield update
        if update.final:
            return
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return
        time.sleep(poll_s)


def active_ui_job(state, api: str = "ui") -> Optional[str]:
    """The newest job the page started that is still queued or running (None: none). A reloaded page
    re-attaches to it: its progress, its result and its Cancel (the job never stopped: it is the store's).
    `api`: the job's meta api, "ui" (the video page's, `submit`) or "ui-images" (the image page's)."""
    jobs, _ = state.store.list(limit=20, statuses=("queued", "in_progress"))
    return next((job.id for job in jobs if (job.meta or {}).get("api") == api), None)


def cancel(state, job_id: Optional[str]) -> bool:
    """Stop a queued or running job (the worker stops at its next step) and remove its file."""
    from lightx2v.server.openai_routes import remove_job

    if not job_id:
        return False
    return remove_job(state, job_id, hide_cancelled=False) is not None
