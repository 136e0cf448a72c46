"""Bad requests get a 4xx with a JSON error naming the field, never a 500 or a traceback."""

from __future__ import annotations

import pytest



@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


def check_error(r, status: int, param=None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    return err


CASES = [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "x", "size": "33x16"}, "size", "multiple of 16"),
    ({"prompt": "x", "size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "16x16", "num_frames": "6"}, "num_frames", "4k+1"),
    ({"prompt": "x", "size": "16x16", "num_frames": "many"}, "num_frames", "integer"),
    ({"prompt": "x", "size": "16x16", "solver": "nope"}, "solver", "expected one of"),
    ({"prompt": "x", "size": "16x16", "num_inference_steps": "0"}, "num_inference_steps", "positive"),
    ({"prompt": "x", "size": "16x16", "guidance_scale": "nan"}, "guidance_scale", "number"),
    ({"prompt": "x", "seconds": "-1"}, "seconds", "> 0"),
    ({"prompt": "x", "model": "sora-2"}, "model", "not served"),
    ({"prompt": "x", "seed": "1.5"}, "seed", "integer"),
]


@pytest.mark.parametrize("fields, param, words", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_fields_name_the_field(server, fields, param, words):
    with server.client() as h:
        err = check_error(h.post("/v1/videos", data=fields), 400, param)
        assert words in err["message"]
        # the same check on the JSON body
        check_error(h.post("/v1/videos", json=fields), 400, param)


def test_an_image_that_is_not_an_image(server):
    with server.client() as h:
        r = h.post("/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.png", b"not a png", "image/png")})
        assert "not a readable image" in check_error(r, 400, "input_reference")["message"]
        r = h.post("/v1/videos", json={"prompt": "x", "input_reference": {"image_url": "data:image/png;base64,AAAA"}})
        check_error(r, 400, "input_reference")
        # no URL is fetched, no path is read
        for ref in ("http://169.254.169.254/latest", "/etc/passwd", "file:///etc/passwd"):
            r = h.post("/v1/videos", json={"prompt": "x", "input_reference": {"image_url": ref}})
            assert "fetches no URLs" in check_error(r, 400, "input_reference")["message"]
        r = h.post("/v1/tasks/video", json={"prompt": "x", "image_path": "/etc/passwd"})
        check_error(r, 400, "image_path")


def test_oversized_uploads_get_413(server):
    with server.client() as h:
        big = b"\0" * (2 * 2**20)
        r = h.post("/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.png", big, "image/png")})
        check_error(r, 413)

        def chunks():  # no Content-Length: the stream is cut when it passes the bound
            for _ in range(40):
                yield b"{" + b" " * 65536
        r = h.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
        check_error(r, 413)


def test_unknown_ids_and_traversal_are_404(server):
    with server.client() as h:
        for path in ("/v1/videos/video_doesnotexist", "/v1/videos/video_doesnotexist/content",
                     "/v1/videos/..%2F..%2Fjobs.sqlite3/content", "/v1/videos/video_..%2F..%2Fjobs.sqlite3/content",
                     "/v1/tasks/video_nope/status", "/v1/tasks/..%2Fserver.lock/result"):
            r = h.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert b"SQLite" not in r.content and "Traceback" not in r.text
        check_error(h.delete("/v1/videos/video_nope"), 404, "video_id")


def test_bad_bodies_and_queries(server):
    with server.client() as h:
        check_error(h.post("/v1/videos", content=b"{nope", headers={"content-type": "application/json"}), 400)
        check_error(h.post("/v1/videos", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
        check_error(h.post("/v1/videos", content=b"prompt=x", headers={"content-type": "text/plain"}), 415)
        check_error(h.get("/v1/videos", params={"limit": "1000"}), 400, "limit")
        check_error(h.get("/v1/videos", params={"order": "sideways"}), 400, "order")
        check_error(h.post("/v1/tasks/video", json={"prompt": "x", "nonsense": 1}), 400, "nonsense")
        check_error(h.post("/v1/tasks/video", json={"prompt": "x", "target_video_length": 6}), 400, "target_video_length")
