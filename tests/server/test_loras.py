"""Per-job LoRAs (--lora-dir): the offered list, jobs with and without a LoRA interleaved on one
server (a LoRA changes the video, the next job without it is the no-LoRA video again, bit for bit),
the task API's field, and bad names / strengths as one-line 400s. The shared server (conftest.py)
offers the LoRAs; the parsing and the folder checks run in-process."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lightx2v.errors import InputError
from tests.runtime.test_engine_wan22 import write_lora  # official keys, the tiny DiT's widths
from tests.server.conftest import SMALL, wait_for

NAMES = ["detail.safetensors", "style.safetensors"]


def write_lora_dir(folder):
    """Two LoRAs for the tiny DiT, and a safetensors file that is no LoRA (left out at startup)."""
    write_lora(folder / "style.safetensors", seed=1)
    write_lora(folder / "detail.safetensors", seed=2)
    save_file({"weight": torch.ones(4, 4)}, str(folder / "notalora.safetensors"))
    return folder


def frames_of(data: bytes, tmp_path, name: str) -> bytes:
    """The decoded RGB frames of an mp4 (bytes), to compare videos pixel for pixel."""
    import imageio_ffmpeg

    path = tmp_path / name
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        next(reader)  # the metadata
        return b"".join(reader)
    finally:
        reader.close()


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server  # started with --lora-dir of write_lora_dir (conftest.py)


def test_the_offered_loras_are_listed(server):
    with server.client() as h:
        body = h.get("/v1/loras").json()
    assert body["object"] == "list"
    assert [item["id"] for item in body["data"]] == NAMES
    assert all(item["ranks"] == [4] and "64" in item["fits"] for item in body["data"])
    assert "notalora.safetensors left out: not a LoRA file" in server.log()


def test_jobs_with_and_without_loras_interleave(server, tmp_path):
    """Queued together, run in order: none, style, none, style (again), detail x 0.5 (task API)."""
    base = {**SMALL, "prompt": "a lantern", "seed": "7"}
    with server.client() as h:
        ids = [h.post("/v1/videos", data={**base, **extra}).json()["id"]
               for extra in ({}, {"lora": "style.safetensors:1.0"}, {}, {"lora": "style"})]
        task = h.post("/v1/tasks/video", json={"prompt": "a lantern", "seed": 7, "size": "16x16", "infer_steps": 1,
                                               "target_video_length": 1, "lora": "detail.safetensors:0.5"})
        assert task.status_code == 200, task.text
        ids.append(task.json()["task_id"])
        videos = []
        for i, vid in enumerate(ids):
            assert wait_for(h, vid)["status"] == "completed"
            videos.append(frames_of(h.get(f"/v1/videos/{vid}/content").content, tmp_path, f"{i}.mp4"))
    none1, style1, none2, style2, detail = videos
    assert style1 != none1 and detail not in (none1, style1)  # a LoRA changes the video
    assert none2 == none1  # after a LoRA job, the no-LoRA video again, bit for bit
    assert style2 == style1  # the same LoRA again (by its name without .safetensors)
    # what each job ran with, from the pipeline's own record next to the video
    used = [json.loads((server.data_dir / "videos" / f"{vid}.mp4.json").read_text())["loras"] for vid in ids]
    assert [[(u["path"].rsplit("/", 1)[-1], u["strength"], u["mode"]) for u in job] for job in used] == [
        [], [("style.safetensors", 1.0, "dynamic")], [], [("style.safetensors", 1.0, "dynamic")],
        [("detail.safetensors", 0.5, "dynamic")]]


BAD = [
    ("nope.safetensors", "lora 'nope.safetensors' is not offered here; choose from: detail.safetensors, style.safetensors"),
    ("../style.safetensors", "is not offered here"),
    ("/etc/passwd", "is not offered here"),
    ("style.safetensors:abc", "the strength after ':' must be a number"),
    ("style.safetensors:nan", "must be a finite number from -10 to 10"),
    ("style.safetensors:99", "must be a finite number from -10 to 10"),
    ("style,style.safetensors:0.5", "names style.safetensors twice"),
    ("style,", "lora must be NAME[:STRENGTH] separated by commas"),
]


@pytest.mark.parametrize("value, words", BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_a_bad_lora_is_a_one_line_400(server, value, words):
    with server.client() as h:
        before = len(h.get("/v1/tasks/").json())
        r = h.post("/v1/videos", json={"prompt": "x", "size": "16x16", "lora": value})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "lora" and words in err["message"] and "\n" not in err["message"]
        assert len(h.get("/v1/tasks/").json()) == before  # nothing queued


# ---- in-process: no server


def test_without_lora_dir_a_lora_is_refused_naming_the_flag(tiny_model):
    from lightx2v.loading.detect import detect
    from lightx2v.server.requests import ApiError, Served, build_request

    served = Served("tiny", detect(tiny_model), 16)
    with pytest.raises(ApiError) as err:
        build_request(served, {"prompt": "x", "lora": "style.safetensors"}, None, "openai")
    assert err.value.status == 400 and err.value.param == "lora" and "--lora-dir DIR" in err.value.message
    _, _, meta = build_request(served, {"prompt": "x", "lora": " "}, None, "openai")  # empty: no LoRA
    assert "loras" not in meta


def test_scan_keeps_the_loras_for_this_model(tmp_path):
    from lightx2v.server.loras import parse_job_loras, scan_lora_dir

    folder = write_lora_dir(tmp_path)
    write_lora(tmp_path / "other-size.safetensors", seed=3, targets={"blocks.0.self_attn.q": (96, 96)})
    write_lora(tmp_path / "a,b.safetensors", seed=4)
    lib = scan_lora_dir(folder, dim=64)
    assert lib.names == tuple(NAMES)  # not: no LoRA, another width, a name the field cannot carry
    assert lib.paths([("style", 0.5)]) == ((str(tmp_path.resolve() / "style.safetensors"), 0.5),)
    assert parse_job_loras("detail:0.25, style.safetensors", lib) == (("detail.safetensors", 0.25),
                                                                      ("style.safetensors", 1.0))
    with pytest.raises(InputError, match="not offered by this server any more"):
        lib.paths([("gone.safetensors", 1.0)])


def test_scan_errors_are_one_line(tmp_path):
    from lightx2v.server.loras import scan_lora_dir

    with pytest.raises(InputError, match="is not a folder"):
        scan_lora_dir(tmp_path / "missing")
    save_file({"weight": torch.ones(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match=r"has no LoRA \.safetensors file for this model \(left out: x.safetensors"):
        scan_lora_dir(tmp_path)


def test_serve_with_a_wrong_lora_dir_is_one_line_before_serving(tiny_model, tmp_path, capsys):
    from lightx2v.cli.main import main

    code = main(["serve", "--model-path", str(tiny_model), "--device", "cpu", "--data-dir", str(tmp_path / "d"),
                 "--lora-dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and "--lora-dir" in err and "is not a folder" in err and "Traceback" not in err
