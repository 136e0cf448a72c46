"""LightX2V's task API on the shared server (httpx): create (JSON and form), status, result, list,
stop, service status; the same jobs as the OpenAI routes."""

from __future__ import annotations

import time


def wait_task(h, task_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = h.get(f"/v1/tasks/{task_id}/status").json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(body)


def test_task_routes(shared_server):
    with shared_server.client() as h:
        r = h.post("/v1/tasks/video", json={"prompt": "a lantern", "infer_steps": 1, "target_video_length": 5,
                                            "size": "16x16", "seed": 3, "task_id": "mine", "save_result_path": "/etc/x"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"task_id", "task_status", "save_result_path"} and body["task_status"] == "pending"
        tid = body["task_id"]
        assert tid != "mine" and body["save_result_path"] == f"{tid}.mp4"  # the server's id and file name
        status = wait_task(h, tid)
        assert status["status"] == "completed" and status["end_time"] and status["error"] is None
        result = h.get(f"/v1/tasks/{tid}/result")
        assert result.status_code == 200 and result.content[4:8] == b"ftyp"
        assert h.get(f"/v1/videos/{tid}").json()["status"] == "completed"  # one queue for both APIs
        assert tid in h.get("/v1/tasks/").json()

        form = h.post("/v1/tasks/video/form", data={"prompt": "form", "infer_steps": "1", "target_video_length": "1",
                                                    "size": "16x16"})
        assert form.status_code == 200, form.text
        assert wait_task(h, form.json()["task_id"])["status"] == "completed"

        slow = h.post("/v1/tasks/video", json={"prompt": "slow", "infer_steps": 400, "target_video_length": 1,
                                               "size": "16x16"}).json()["task_id"]
        stop = h.delete(f"/v1/tasks/{slow}").json()
        assert stop == {"stop_status": "success", "reason": "Task stopped successfully."}
        assert h.get(f"/v1/tasks/{slow}/status").json()["status"] == "cancelled"
        assert h.delete(f"/v1/tasks/{slow}").json()["stop_status"] == "do_nothing"
        assert h.get(f"/v1/tasks/{slow}/result").status_code == 404

        service = h.get("/v1/service/status").json()
        assert {"service_status", "current_task", "pending_tasks", "queue_size", "completed_tasks"} <= set(service)
        assert service["completed_tasks"] >= 2
        queue = h.get("/v1/tasks/queue/status").json()
        assert queue["queue_size"] == 100 and queue["queue_available"] <= 100
