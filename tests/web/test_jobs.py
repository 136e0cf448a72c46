"""The UI's bridge to the job store, without gradio or a process: seeds, fields, errors."""

import time

import pytest

from lightx2v.errors import InputError
from lightx2v.web import jobs


def test_pick_seed_keeps_a_given_seed_and_draws_a_random_one():
    assert jobs.pick_seed(42) == 42
    assert jobs.pick_seed(7.0) == 7  # gradio's Number gives floats
    drawn = {jobs.pick_seed(-1) for _ in range(8)} | {jobs.pick_seed(None) for _ in range(8)}
    assert all(0 <= s <= jobs.MAX_SEED for s in drawn)
    assert len(drawn) > 1  # random, not a fixed fallback


@pytest.mark.parametrize("bad", ["abc", 1.5])
def test_pick_seed_refuses_non_integers(bad):
    with pytest.raises(InputError, match="seed must be an integer"):
        jobs.pick_seed(bad)


def test_request_fields_size_and_defaults():
    fields = jobs.request_fields({"prompt": "a cat", "negative_prompt": "", "height": 480.0, "width": 832.0,
                                  "num_frames": 5, "solver": "default", "shift": None})
    assert fields == {"prompt": "a cat", "size": "832x480", "num_frames": 5}


def test_request_fields_one_side_only_is_one_line():
    with pytest.raises(InputError, match="both the width and the height") as err:
        jobs.request_fields({"prompt": "x", "height": 480})
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="width must be a positive integer"):
        jobs.request_fields({"prompt": "x", "height": 480, "width": -16})


def test_update_final():
    assert jobs.Update("completed", 100).final and jobs.Update("cancelled", 3).final
    assert not jobs.Update("in_progress", 50).final


def test_a_reloaded_page_reattaches_to_the_newest_running_ui_job(tmp_path):
    from types import SimpleNamespace

    from lightx2v.server.store import SQLiteStore

    store = SQLiteStore(tmp_path / "jobs.sqlite")
    store.init_schema()
    state = SimpleNamespace(store=store)
    assert jobs.active_ui_job(state) is None
    api_job = store.create({"prompt": "x"}, {"api": "openai"})
    assert jobs.active_ui_job(state) is None  # an API client's job is not the page's
    first = store.create({"prompt": "a"}, {"api": "ui"})
    time.sleep(0.01)  # distinct creation times: "newest" is by creation time
    second = store.create({"prompt": "b"}, {"api": "ui"})
    assert jobs.active_ui_job(state) == second.id  # the newest
    store.cancel(second.id)
    assert jobs.active_ui_job(state) == first.id
    claimed = store.claim("w1", lease_s=60)  # the oldest queued one (the API's) runs; the page's waits
    assert claimed.id == api_job.id and jobs.active_ui_job(state) == first.id
    store.cancel(first.id)
    assert jobs.active_ui_job(state) is None
    image_job = store.create({"prompt": "c"}, {"api": "ui-images", "kind": "image"})
    assert jobs.active_ui_job(state) is None  # the image page's job is not the video page's
    assert jobs.active_ui_job(state, "ui-images") == image_job.id  # but the image page re-attaches to it
    store.close()
