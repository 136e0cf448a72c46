"""The OpenAI Images API for an image model (Qwen-Image), so `openai.OpenAI(base_url=...).images.generate`
works unchanged.

    POST /v1/images/generations     prompt, n, size "WxH", response_format b64_json | url, output_format
                                    png | webp | jpeg, and our negative_prompt, seed, steps, guidance_scale
    POST /v1/images/edits           an edit model (Qwen-Image-Edit, -2509, -2511): multipart `image` (one file,
                                    `image[]` or `image` repeated for several) or JSON `image` as a base64
                                    data URL (or a list of them), and the same fields as generations
    GET  /v1/images/files/{name}    an image a `url` answer points at (from the data dir's images/)

Design: OpenAI's call is synchronous, but the work goes through the same durable job store and worker
as the videos (one queue, one model, one job at a time): the route queues a job (api "openai-images",
meta kind "image") and waits for it to finish, then answers with the images (base64, or URLs under
/v1/images/files/, which need the API key as every /v1 route). A failed job answers 400 when the
request was at fault, else 500, with the worker's one line. A video model refuses these routes (400)
and an image model refuses /v1/videos (openai_routes.submit); a text-to-image model refuses /edits and an
edit model /generations, each in one line. An edit's input images are checked (check_image) and stored
in the job's request as the videos API stores its input_reference.
"""


import asyncio
import base64
import re
import time

from typing import Optional

from lightx2v.server.requests import ApiError, check_image, decode_data_url, image_file_names

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
_EDIT_SCHEMA = {**_BODY_SCHEMA, "required": ["prompt", "image"], "properties": {
    **_BODY_SCHEMA["properties"],
    "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "`image` or `image[]`"}}}
EDITS_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _EDIT_SCHEMA}}}}
IMAGE_FILE_FIELDS = ("image", "image[]")
MAX_INPUT_IMAGES = 8  # per edit request, before the model's own count rule (Edit: 1, Edit-Plus: 3)


async def read_edit_fields(request) -> tuple[dict, list[bytes]]:
    """(fields, checked input images) of an images/edits body: multipart `image` / `image[]` files (in the
    order sent), or JSON `image` as a base64 data URL, {"image_url": ...}, or a list of those."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        from lightx2v.server.openai_routes import read_fields

        fields, _, _ = await read_fields(request, max_files=0)
        given = fields.pop("image", None)
        given = given if isinstance(given, list) else [] if given in (None, "") else [given]
        images = []
        for item in given[:MAX_INPUT_IMAGES + 1]:
            url = item.get("image_url") if isinstance(item, dict) else item
            if not isinstance(url, str):
                raise ApiError(400, "image must be a base64 data URL, {\"image_url\": data URL} or a list of them",
                               param="image", code="invalid_value")
            images.append(check_image(decode_data_url(url, "image"), "image"))
        return fields, _at_most(images)
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):  # (the latter: no image)
        raise ApiError(415, "send multipart/form-data (image files) or application/json", code="unsupported_media_type")
    try:
        form = await request.form(max_files=MAX_INPUT_IMAGES + 1, max_fields=64)
    except Exception as exc:  # noqa: BLE001 - malformed multipart, or too many files: the parser's own message
        raise ApiError(400, f"the form could not be read: {str(exc)[:120]}", code="invalid_form") from None
    fields, images = {}, []
    for key, value in form.multi_items():
        if not hasattr(value, "read"):
            fields[key] = value
        elif key in IMAGE_FILE_FIELDS:
            images.append(check_image(await value.read(), "image"))
        else:
            raise ApiError(400, f"unexpected file field {key!r:.40}; the images go in 'image' or 'image[]'",
                           param=key, code="invalid_value")
    return fields, _at_most(images)


def _at_most(images: list) -> list:
    if len(images) > MAX_INPUT_IMAGES:
        raise ApiError(400, f"at most {MAX_INPUT_IMAGES} input images per edit, got more", param="image",
                       code="invalid_value")
    return images


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

    def refuse_task(wanted: str):
        """A text-to-image model refuses /edits and an edit model /generations, in one line."""
        task = state.served.mc.task
        if wanted == "edit" and task != "edit":
            raise ApiError(400, f"image edits are not supported by this model ({state.served.mc.spec.title} {task}); "
                                "serve an edit model (Qwen-Image-Edit*) or use POST /v1/images/generations",
                           code="unsupported")
        if wanted != "edit" and task == "edit":
            raise ApiError(400, f"this server serves an edit model ({state.served.mc.spec.title} edit), which needs "
                                "an input image; use POST /v1/images/edits", code="unsupported")

    async def run_images(request, fields: dict, images: Optional[list]) -> dict:
        t0 = time.time()
        job = await run_in_threadpool(submit, state, fields, images, "openai-images")
        done = await wait_done(state, job.id)
        if done is None or done.status == "cancelled":
            raise ApiError(409, f"image job {job.id} was cancelled before it finished", code="cancelled")
        if done.status == "failed":
            status = 400 if done.error_code == "invalid_request" else 500
            raise ApiError(status, done.error_message or "the generation failed", code=done.error_code)
        body = await run_in_threadpool(images_response, state, done, str(request.base_url))
        body["usage"] = {"seconds": round(time.time() - t0, 3)}
        return body

    @r.post("/images/generations", openapi_extra=GENERATIONS_BODY, summary="generate images (waits for them)")
    async def generate_images(request: Request):
        refuse_video_model()
        refuse_task("t2i")
        fields, upload, name = await read_fields(request, max_files=0)
        return await run_images(request, fields, None)

    @r.post("/images/edits", openapi_extra=EDITS_BODY, summary="edit one or several images (waits for the result)")
    async def edit_images(request: Request):
        refuse_video_model()
        refuse_task("edit")
        fields, images = await read_edit_fields(request)
        return await run_images(request, fields, images)

    @r.get("/images/files/{name}", summary="an image of a `url` answer", response_class=FileResponse)
    def image_file(name: str):
        path = images_dir(state) / name
        if not FILE_RE.match(name) or not path.is_file():
            raise ApiError(404, f"no image {name[:80]!r}", param="name", code="not_found")
        return FileResponse(path, media_type=MEDIA[name.rsplit(".", 1)[1]])

    return r
