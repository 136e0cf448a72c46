"""The OpenAI Videos API: the same paths, fields and objects, so `openai.OpenAI(base_url=...).videos`
works unchanged.

    POST   /v1/videos                 create (multipart/form-data as the client sends it, or JSON)
    GET    /v1/videos                 list (after, limit, order)
    GET    /v1/videos/{id}            the `video` object
    GET    /v1/videos/{id}/content    the mp4 (range requests)
    DELETE /v1/videos/{id}            cancel a queued or running job, remove its file
    GET    /v1/videos/{id}/events     server-sent events: progress, then the final status

Our extra fields (negative_prompt, num_frames, num_inference_steps, guidance_scale, shift,
solver, seed, lora) come as extra body fields; in a form they are strings and converted here.
`lora` is "NAME[:STRENGTH],..." naming files of --lora-dir (GET /v1/loras; lightx2v.server.loras).
"""


import asyncio
import json
import re
from typing import Optional

from lightx2v.server.requests import ApiError, build_request, check_image, decode_data_url
from lightx2v.server.store import Job, QueueFull
from lightx2v.server.worker import remove_outputs

ID_RE = re.compile(r"^video_[A-Za-z0-9_-]{1,64}$")
STATUS = {"queued": "queued", "in_progress": "in_progress", "completed": "completed", "failed": "failed"}

_CREATE_SCHEMA = {
    "type": "object", "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string"}, "model": {"type": "string"}, "seconds": {"type": "string"},
        "size": {"type": "string", "description": "WIDTHxHEIGHT"},
        "input_reference": {"type": "string", "format": "binary"},
        "negative_prompt": {"type": "string"}, "num_frames": {"type": "integer"},
        "num_inference_steps": {"type": "integer"}, "guidance_scale": {"type": "number"},
        "shift": {"type": "number"}, "solver": {"type": "string"}, "seed": {"type": "integer"},
        "lora": {"type": "string", "description": "NAME[:STRENGTH],... of GET /v1/loras (--lora-dir)"},
    },
}
CREATE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _CREATE_SCHEMA},
    "application/json": {"schema": {**_CREATE_SCHEMA, "properties": {
        **_CREATE_SCHEMA["properties"], "input_reference": {
            "type": "object", "properties": {"image_url": {"type": "string"}}}}}}}}}


def video_object(job: Job) -> dict:
    """The OpenAI `video` object of a job."""
    error = None
    if job.status == "failed":
        error = {"code": job.error_code or "failed", "message": job.error_message or "the job failed"}
    return {
        "id": job.id, "object": "video", "created_at": int(job.created_at), "status": STATUS.get(job.status, "failed"),
        "model": job.meta.get("model"), "progress": int(job.progress), "seconds": job.meta.get("seconds"),
        "size": job.meta.get("size"), "prompt": job.meta.get("prompt"),
        "completed_at": None if job.completed_at is None else int(job.completed_at),
        "expires_at": None, "error": error, "remixed_from_video_id": None,
    }


async def read_fields(request, max_files: int = 1) -> tuple[dict, Optional[bytes], Optional[str]]:
    """(fields, image bytes, the image's field name) of a multipart or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object of fields", code="invalid_json")
        return data, None, None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=max_files, max_fields=64)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed multipart: the parser's own message
            raise ApiError(400, f"the form could not be read: {str(exc)[:120]}", code="invalid_form") from None
        fields, image, name = {}, None, None
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an UploadFile
                image, name = await value.read(), key
            else:
                fields[key] = value
        return fields, image, name
    raise ApiError(415, "send multipart/form-data or application/json", code="unsupported_media_type")


def reference_image(fields: dict, image: Optional[bytes], name: Optional[str], field: str) -> Optional[bytes]:
    """The image of an OpenAI request: an upload named `field`, or {"image_url": data URL}."""
    if image is not None:
        if name != field:
            raise ApiError(400, f"unexpected file field {name!r:.40}; the image goes in {field!r}", param=name,
                           code="invalid_value")
        return check_image(image, field)
    ref = fields.pop(field, None)
    url = fields.pop(f"{field}[image_url]", None)
    if isinstance(ref, dict):
        if ref.get("file_id"):
            raise ApiError(400, f"{field}.file_id is not supported; upload the image or give image_url",
                           param=field, code="unsupported")
        url = ref.get("image_url")
    elif ref not in (None, ""):
        url = ref if isinstance(ref, str) else None
        if url is None:
            raise ApiError(400, f"{field} must be an uploaded image or {{\"image_url\": data URL}}", param=field,
                           code="invalid_value")
    if url in (None, ""):
        return None
    if not isinstance(url, str):
        raise ApiError(400, f"{field}.image_url must be a string", param=field, code="invalid_value")
    return check_image(decode_data_url(url, field), field)


def get_job(state, video_id: str, hide_cancelled: bool = True) -> Job:
    job = state.store.get(video_id) if ID_RE.match(video_id) else None
    if job is None or (hide_cancelled and job.status == "cancelled"):
        raise ApiError(404, f"no video with id {video_id[:80]!r}", param="video_id", code="not_found")
    return job


def submit(state, fields: dict, image: Optional[bytes], api: str, last_image: Optional[bytes] = None) -> Job:
    """Check a request against the model and queue it (400 / 429 otherwise). An image model's requests
    come through POST /v1/images/generations (api "openai-images"); a video route refuses them."""
    if api in ("openai-images", "ui-images"):  # (the web UI's image page: lightx2v.web.image_app)
        from lightx2v.server.requests import build_image_request

        _, request, meta = build_image_request(state.served, fields, image, api)  # image: an edit's list of bytes
    elif state.served.is_image:
        raise ApiError(400, f"this server serves an image model ({state.served.mc.spec.title}), which makes no videos; "
                            "use POST /v1/images/generations", code="unsupported_model")
    else:
        _, request, meta = build_request(state.served, fields, image, api, last_image=last_image)
    try:
        job = state.store.create(request, meta, max_queue=state.max_queue)
    except QueueFull:
        raise ApiError(429, f"the queue is full ({state.max_queue} jobs waiting or running); retry later",
                       code="queue_full", headers={"Retry-After": str(state.retry_after_s)}) from None
    state.worker.wake.set()
    return job


def remove_job(state, video_id: str, hide_cancelled: bool = True) -> Optional[Job]:
    """Cancel a job and remove its file; the old row, or None if it was not there."""
    if not ID_RE.match(video_id):
        return None
    job = state.store.cancel(video_id)
    if job is not None:
        remove_outputs(state.data_dir / "videos", job.id)
    return job


def router(state):
    from fastapi import APIRouter, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, StreamingResponse

    r = APIRouter(prefix="/v1", tags=["OpenAI videos"])

    @r.post("/videos", openapi_extra=CREATE_BODY, summary="create a video job")
    async def create_video(request: Request):
        fields, image, name = await read_fields(request)
        image = reference_image(fields, image, name, "input_reference")
        job = await run_in_threadpool(submit, state, fields, image, "openai")
        return video_object(job)

    @r.get("/videos", summary="list video jobs")
    def list_videos(after: Optional[str] = Query(None, max_length=100), limit: int = Query(20, ge=1, le=100),
                    order: str = Query("desc", pattern="^(asc|desc)$")):
        jobs, more = state.store.list(after=after, limit=limit, order=order)
        data = [video_object(j) for j in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @r.get("/videos/{video_id}", summary="a video job")
    def retrieve_video(video_id: str):
        return video_object(get_job(state, video_id))

    @r.delete("/videos/{video_id}", summary="cancel a job and delete its video")
    def delete_video(video_id: str):
        if remove_job(state, video_id) is None:
            raise ApiError(404, f"no video with id {video_id[:80]!r}", param="video_id", code="not_found")
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @r.get("/videos/{video_id}/content", summary="the mp4", response_class=FileResponse)
    def video_content(video_id: str, variant: str = Query("video", pattern="^(video|thumbnail|spritesheet)$")):
        job = get_job(state, video_id)
        if variant != "video":
            raise ApiError(400, f"variant {variant!r} is not available; only 'video'", param="variant", code="unsupported")
        path = state.video_path(job)
        if job.status != "completed" or path is None or not path.is_file():
            raise ApiError(404, f"video {video_id} is {job.status}; its content is there once completed",
                           param="video_id", code="not_ready")
        return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")

    @r.get("/videos/{video_id}/events", summary="server-sent events: progress, then the final status")
    async def video_events(video_id: str):
        await run_in_threadpool(get_job, state, video_id)
        return StreamingResponse(_events(state, video_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return r


async def _events(state, video_id: str, poll_s: float = 0.1):
    from fastapi.concurrency import run_in_threadpool

    last = None
    while True:
        job = await run_in_threadpool(state.store.get, video_id)
        if job is None or job.status == "cancelled":
            yield f"event: cancelled\ndata: {json.dumps({'id': video_id, 'status': 'cancelled'})}\n\n"
            return
        key = (job.status, job.progress)
        if key != last:
            last = key
            final = job.status in ("completed", "failed")
            kind = job.status if final else "progress"
            yield f"event: {kind}\ndata: {json.dumps(video_object(job))}\n\n"
            if final:
                return
        await asyncio.sleep(poll_s)
