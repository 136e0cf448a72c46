"""The OpenAI Images API for an image model (Qwen-Image), so `openai.OpenAI(base_url=...).images.generate`
works unchanged.

    POST /v1/images/generations     prompt, n, size "WxH", response_format b64_json | url, output_format
                                    png | webp | jpeg, and our negative_prompt, seed, steps, guidance_scale
    POST /v1/images/edits           400 "not supported by this model" (until an edit model is served)
    GET  /v1/images/files/{name}    an image a `url` answer points at (from the data dir's images/)

Design: OpenAI's call is synchronous, but the work goes through the same durable job store and worker
as the videos (one queue, one model, one job at a time): the route queues a job (api "openai-images",
meta kind "image") and waits for it to finish, then answers with the images (base64, or URLs under
/v1/images/files/, which need the API key as every /v1 route). A failed job answers 400 when the
request was at fault, else 500, with the worker's one line. A video model refuses these routes (400)
and an image model refuses /v1/videos (openai_routes.submit).
"""


import asyncio
import base64
import re
import time

from lightx2v.server.requests import ApiError, image_file_names

FILE_RE = re.compile(r"^video_[A-Za-z0-9_-]{1,64}(_\d{1,2})?\.(png|webp|jpg)$")
MEDIA = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
_BODY_SCHEMA = {
    "type": "object", "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": "integer"},
        "size": {"type": "string", "description": "WIDTHxHEIGHT"},
        "response_format": {"type": "string", "enum": ["b64_json", "url"]},
        "output_format": {"type": "string", "enum": ["png", "webp", "jpeg"]},
        "negative_prompt": {"type": "string"}, "seed": {"type": "integer"}, "steps": {"type": "integer"},
        "guidance_scale": {"type": "number", "description": "the true CFG scale"},
    },
}
GENERATIONS_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _BODY_SCHEMA}, "multipart/form-data": {"schema": _BODY_SCHEMA}}}}


def images_dir(state):
    return state.data_dir / "images"


def images_response(state, job, base_url: str) -> dict:
    """OpenAI's images response of a completed job: {created, data: [{b64_json} | {url}], size, output_format}."""
    meta = job.meta
    names = image_file_names(job.id, int(meta["n"]), meta["ext"])
    data = []
    for name in names:
        path = images_dir(state) / name
        if not path.is_file():
            raise ApiError(500, f"image {name} of job {job.id} is missing from the data dir", code="internal_error")
        if meta["response_format"] == "url":
            data.append({"url": f"{base_url.rstrip('/')}/v1/images/files/{name}"})
        else:
            data.append({"b64_json": base64.b64encode(path.read_bytes()).decode("ascii")})
    return {"created": int(job.created_at), "data": data, "size": meta["size"], "output_format": meta["output_format"]}


async def wait_done(state, job_id: str, poll_s: float = 0.1):
    """The job once completed, failed or cancelled (polled from the store, off the event loop)."""
    from fastapi.concurrency import run_in_threadpool

    while True:
        job = await run_in_threadpool(state.store.get, job_id)
        if job is None or job.status in ("completed", "failed", "cancelled"):
            return job
        await asyncio.sleep(poll_s)


def router(state):
    from fastapi import APIRouter, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse

    from lightx2v.server.openai_routes import read_fields, submit

    r = APIRouter(prefix="/v1", tags=["OpenAI images"])

    def refuse_video_model():
        if not state.served.is_image:
            raise ApiError(400, f"this server serves a video model ({state.served.mc.spec.title}), which makes no "
                                "images; use POST /v1/videos", code="unsupported_model")

    @r.post("/images/generations", openapi_extra=GENERATIONS_BODY, summary="generate images (waits for them)")
    async def generate_images(request: Request):
        refuse_video_model()
        fields, upload, name = await read_fields(request, max_files=0)
        t0 = time.time()
        job = await run_in_threadpool(submit, state, fields, None, "openai-images")
        done = await wait_done(state, job.id)
        if done is None or done.status == "cancelled":
            raise ApiError(409, f"image job {job.id} was cancelled before it finished", code="cancelled")
        if done.status == "failed":
            status = 400 if done.error_code == "invalid_request" else 500
            raise ApiError(status, done.error_message or "the generation failed", code=done.error_code)
        body = await run_in_threadpool(images_response, state, done, str(request.base_url))
        body["usage"] = {"seconds": round(time.time() - t0, 3)}
        return body

    @r.post("/images/edits", summary="edit an image (not supported by the served model)")
    async def edit_images():
        refuse_video_model()
        raise ApiError(400, f"image edits are not supported by this model ({state.served.mc.spec.title} "
                            f"{state.served.mc.task}); serve an edit model", code="unsupported")

    @r.get("/images/files/{name}", summary="an image of a `url` answer", response_class=FileResponse)
    def image_file(name: str):
        path = images_dir(state) / name
        if not FILE_RE.match(name) or not path.is_file():
            raise ApiError(404, f"no image {name[:80]!r}", param="name", code="not_found")
        return FileResponse(path, media_type=MEDIA[name.rsplit(".", 1)[1]])

    return r
