"""The OpenAI Videos API on a real server, driven by the official `openai` client and by httpx."""

from __future__ import annotations

import io
import json
import time

import pytest

from tests.server.conftest import API_KEY, SMALL, wait_for

openai = pytest.importorskip("openai")
# the client marks the Videos API deprecated (OpenAI's service); the API shape is what we serve
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def probe_mp4(data: bytes) -> tuple[int, tuple[int, int]]:
    """(frames, (width, height)) of an mp4, read back by ffmpeg."""
    import tempfile

    import imageio_ffmpeg

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        reader = imageio_ffmpeg.read_frames(f.name)
        meta = next(reader)
        frames = sum(1 for _ in reader)
    return frames, tuple(meta["size"])


def test_create_poll_download_with_the_openai_client(client):
    video = client.videos.create(prompt="a red panda drinking tea", size="16x16",
                                 extra_body={"num_frames": 5, "num_inference_steps": 2, "seed": 7})
    assert video.object == "video" and video.id.startswith("video_") and len(video.id) > 20
    assert video.status == "queued" and video.size == "16x16" and video.model == "Wan2.1-T2V-tiny"
    assert video.seconds == "0.3125"  # 5 frames at the model's 16 fps
    deadline = time.time() + 60
    while video.status not in ("completed", "failed") and time.time() < deadline:
        time.sleep(0.1)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed", video.error
    assert video.progress == 100 and video.completed_at >= video.created_at and video.error is None
    content = client.videos.download_content(video.id)
    data = content.read()
    assert data[4:8] == b"ftyp"
    assert probe_mp4(data) == (5, (16, 16))


def test_seconds_map_to_4k_plus_1_frames(server):
    with server.client() as h:
        r = h.post("/v1/videos", data={"prompt": "a boat", "seconds": "0.5", "size": "16x16", "num_inference_steps": "1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["seconds"] == "0.5"
        done = wait_for(h, body["id"])
        assert done["status"] == "completed"
        frames, _ = probe_mp4(h.get(f"/v1/videos/{body['id']}/content").content)
    assert frames == 9  # 0.5 s x 16 fps = 8 -> the nearest 4k+1 above


def test_json_body_and_range_requests(server):
    with server.client() as h:
        r = h.post("/v1/videos", json={"prompt": "a kite", "size": "16x16", "num_frames": 1, "num_inference_steps": 1})
        assert r.status_code == 200, r.text
        vid = r.json()["id"]
        assert wait_for(h, vid)["status"] == "completed"
        full = h.get(f"/v1/videos/{vid}/content")
        assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
        part = h.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=4-11"})
        assert part.status_code == 206 and part.content == full.content[4:12]
        assert part.headers["content-range"] == f"bytes 4-11/{len(full.content)}"


def test_list_pages_in_order(server, client):
    with server.client() as h:
        ids = [h.post("/v1/videos", data={"prompt": f"p{i}", **SMALL}).json()["id"] for i in range(3)]
        for vid in ids:
            wait_for(h, vid)
    page = client.videos.list(limit=2, order="asc")
    seen = [v.id for v in page.data]
    assert len(seen) == 2 and page.has_more
    every = [v.id for v in client.videos.list(limit=2, order="asc")]  # the client's auto-pagination
    assert [i for i in every if i in ids] == ids
    newest = client.videos.list(limit=1, order="desc").data[0].id
    assert newest == ids[-1]
    after = client.videos.list(after=ids[0], order="asc", limit=5)
    assert [v.id for v in after.data][:2] == ids[1:]


def test_delete_cancels_a_running_job_and_removes_files(server, client):
    with server.client() as h:
        slow = h.post("/v1/videos", data={"prompt": "slow", "size": "16x16", "num_frames": "1",
                                          "num_inference_steps": "400"}).json()["id"]
        queued = h.post("/v1/videos", data={"prompt": "after", **SMALL}).json()["id"]
        wait_for(h, slow, statuses=("in_progress",))
        deleted = client.videos.delete(slow)
        assert deleted.deleted and deleted.object == "video.deleted" and deleted.id == slow
        assert h.get(f"/v1/videos/{slow}").status_code == 404
        assert wait_for(h, queued)["status"] == "completed"  # the worker moved on
        assert h.delete(f"/v1/videos/{slow}").status_code == 404
        done = client.videos.delete(queued)
        assert done.deleted
    files = sorted(p.name for p in (server.data_dir / "videos").iterdir())
    assert not [n for n in files if n.startswith((slow, queued))]  # the video and its metadata file
    assert not any(n.endswith(".partial") for n in files)
    stopped = [e for e in server.log_events() if e.get("job") == slow and "stopped" in e["msg"]]
    assert stopped, "the running job was not stopped by its cancel"


def test_events_stream_progress_then_the_final_status(server):
    with server.client() as h:
        vid = h.post("/v1/videos", data={"prompt": "events", "size": "16x16", "num_frames": "1",
                                         "num_inference_steps": "30"}).json()["id"]
        events = []
        with h.stream("GET", f"/v1/videos/{vid}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
    assert events[-1][0] == "completed" and events[-1][1]["progress"] == 100
    progress = [d["progress"] for k, d in events if k == "progress"]
    assert progress == sorted(progress) and len(set(progress)) >= 2


def test_api_key_is_required(server, client):
    import httpx

    assert httpx.get(server.url + "/v1/videos").status_code == 401
    r = httpx.get(server.url + "/v1/videos", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.videos.list()
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # operations need no key


def test_operations_routes(server):
    import httpx

    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    text = httpx.get(server.url + "/metrics").text
    for name in ("lightx2v_queue_length", 'lightx2v_jobs{status="completed"}', "lightx2v_step_seconds_count",
                 "lightx2v_gpu_memory_bytes", "lightx2v_model_loaded 1"):
        assert name in text
    completed = [line for line in text.splitlines() if line.startswith('lightx2v_jobs{status="completed"}')]
    assert int(completed[0].split()[-1]) >= 1
    events = server.log_events()
    assert any(e.get("job", "") and e["msg"].startswith("running") for e in events)  # structured, with the job id


def test_image_upload_reaches_the_model_check(server, client):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    with pytest.raises(openai.BadRequestError) as err:  # a text-to-video model refuses an image, by name
        client.videos.create(prompt="x", size="16x16", input_reference=("a.png", buf.getvalue(), "image/png"))
    assert err.value.body["param"] == "input_reference"
