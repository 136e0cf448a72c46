"""LightX2V's task API, for clients written against ModelTC/LightX2V's server.

    POST   /v1/tasks/video          JSON TaskRequest -> {task_id, task_status, save_result_path}
    POST   /v1/tasks/video/form     the same as a form, the image uploaded as `image_file`
    GET    /v1/tasks/               {task_id: status} of every task
    GET    /v1/tasks/queue/status   pending / active counts
    GET    /v1/tasks/{id}/status    {task_id, status, start_time, end_time, error, save_result_path, progress}
    GET    /v1/tasks/{id}/result    the mp4
    DELETE /v1/tasks/{id}           {stop_status, reason}
    GET    /v1/service/status       {service_status, current_task, active_tasks, pending_tasks, ...}

The jobs are the same jobs as the OpenAI routes' (one store, one queue). Field mapping:
infer_steps -> num_inference_steps, target_video_length -> num_frames, image_path -> the image
(base64 or a data URL only: no URL is fetched and no path read). `lora` (ours) names files of
--lora-dir with strengths, as on the OpenAI route. A client's task_id and
save_result_path are not used: ids are the server's, unguessable, and outputs live in the data dir.
"""


import datetime
from typing import Optional

from lightx2v.server.openai_routes import get_job, read_fields, remove_job, submit
from lightx2v.server.requests import ApiError, check_image, decode_data_url
from lightx2v.server.store import Job

TASK_STATUS = {"queued": "pending", "in_progress": "processing", "completed": "completed", "failed": "failed",
               "cancelled": "cancelled"}
RENAMED = {"infer_steps": "num_inference_steps", "target_video_length": "num_frames"}
PASSED = ("prompt", "negative_prompt", "seed", "guidance_scale", "shift", "solver", "size", "num_inference_steps",
          "num_frames", "lora")
IGNORED = ("task_id", "save_result_path", "num_fragments", "video_duration", "aspect_ratio", "use_prompt_enhancer",
           "talk_objects", "audio_path")
TASK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["prompt"], "properties": {
        "prompt": {"type": "string"}, "negative_prompt": {"type": "string"}, "image_path": {"type": "string"},
        "infer_steps": {"type": "integer"}, "target_video_length": {"type": "integer"}, "seed": {"type": "integer"},
        "guidance_scale": {"type": "number"}, "shift": {"type": "number"}, "solver": {"type": "string"},
        "size": {"type": "string"},
        "lora": {"type": "string", "description": "NAME[:STRENGTH],... of GET /v1/loras (--lora-dir)"}}}}}}}


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def task_status(job: Job) -> dict:
    return {"task_id": job.id, "status": TASK_STATUS[job.status], "start_time": _iso(job.started_at or job.created_at),
            "end_time": _iso(job.completed_at), "error": job.error_message, "progress": job.progress,
            "save_result_path": job.output}


def task_fields(data: dict, image: Optional[bytes], name: Optional[str]) -> tuple[dict, Optional[bytes]]:
    """LightX2V's request fields -> ours (and the image)."""
    unknown = sorted(set(data) - set(PASSED) - set(RENAMED) - set(IGNORED) - {"image_path"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)[:200]}", param=unknown[0], code="invalid_value")
    for key in ("use_prompt_enhancer", "audio_path", "talk_objects"):
        if data.get(key) not in (None, "", False, "false", "False", [], 0, "0"):
            raise ApiError(400, f"{key} is not supported by this server", param=key, code="unsupported")
    fields = {k: v for k, v in data.items() if k in PASSED}
    for old, new in RENAMED.items():
        if data.get(old) not in (None, ""):
            fields[new] = data[old]
    if image is not None:
        if name != "image_file":
            raise ApiError(400, f"unexpected file field {name!r:.40}; the image goes in 'image_file'", param=name,
                           code="invalid_value")
        image = check_image(image, "image_file")
    elif data.get("image_path") not in (None, ""):
        if not isinstance(data["image_path"], str):
            raise ApiError(400, "image_path must be a string (base64 image data)", param="image_path",
                           code="invalid_value")
        image = check_image(decode_data_url(data["image_path"], "image_path"), "image_path")
    return fields, image


def router(state):
    from fastapi import APIRouter, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse

    r = APIRouter(prefix="/v1", tags=["LightX2V tasks"])

    async def _create(request: Request) -> dict:
        data, image, name = await read_fields(request)
        fields, image = task_fields(data, image, name)
        job = await run_in_threadpool(submit, state, fields, image, "task")
        return {"task_id": job.id, "task_status": TASK_STATUS[job.status], "save_result_path": f"{job.id}.mp4"}

    @r.post("/tasks/video", openapi_extra=TASK_BODY, summary="create a video task (JSON)")
    async def create_task(request: Request):
        return await _create(request)

    @r.post("/tasks/video/form", summary="create a video task (form; the image as image_file)")
    async def create_task_form(request: Request):
        return await _create(request)

    @r.get("/tasks/", summary="every task's status")
    def list_tasks():
        jobs, _ = state.store.list(limit=1000, statuses=tuple(TASK_STATUS))
        return {j.id: task_status(j) for j in jobs}

    @r.get("/tasks/queue/status", summary="queue counts")
    def queue_status():
        counts = state.store.counts()
        active = counts["queued"] + counts["in_progress"]
        return {"is_processing": state.worker.stats.current is not None, "current_task": state.worker.stats.current,
                "pending_count": counts["queued"], "active_count": active, "queue_size": state.max_queue,
                "queue_available": max(0, state.max_queue - active)}

    @r.get("/tasks/{task_id}/status", summary="a task's status")
    def get_status(task_id: str):
        return task_status(get_job(state, task_id, hide_cancelled=False))

    @r.get("/tasks/{task_id}/result", summary="a task's video", response_class=FileResponse)
    def get_result(task_id: str):
        job = get_job(state, task_id, hide_cancelled=False)
        path = state.video_path(job)
        if job.status != "completed" or path is None or not path.is_file():
            raise ApiError(404, f"task {task_id} is {TASK_STATUS[job.status]}, not completed", param="task_id",
                           code="not_ready")
        return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")

    @r.delete("/tasks/{task_id}", summary="stop a task")
    def stop_task(task_id: str):
        job = get_job(state, task_id, hide_cancelled=False)
        if job.status in ("completed", "failed", "cancelled"):
            return {"stop_status": "do_nothing", "reason": f"Task is {TASK_STATUS[job.status]}."}
        remove_job(state, task_id)
        return {"stop_status": "success", "reason": "Task stopped successfully."}

    @r.get("/service/status", summary="the service's status")
    def service_status():
        counts = state.store.counts()
        current = state.worker.stats.current
        return {"service_status": "busy" if current else "idle", "current_task": current,
                "active_tasks": [current] if current else [], "pending_tasks": counts["queued"],
                "queue_size": state.max_queue, "total_tasks": sum(counts.values()),
                "completed_tasks": counts["completed"], "failed_tasks": counts["failed"]}

    return r
