"""A request that names no size or frame count gets the checkpoint's (the official configs')."""

from __future__ import annotations

from lightx2v.config import SamplingParams
from lightx2v.loading.detect import detect
from lightx2v.pipelines.request import prepare_request


def _filled(root):
    return prepare_request(detect(root), SamplingParams(prompt="a cat"))


def test_sizes_and_frames_come_from_the_checkpoint(tiny_official_dir, wan22_t2v_dirs, wan22_ti2v_dirs):
    p = _filled(tiny_official_dir)  # Wan2.1: 832x480, 81 frames, 16 fps
    assert (p.width, p.height, p.num_frames, p.fps) == (832, 480, 81, 16)
    for root in wan22_t2v_dirs:  # Wan2.2 A14B: the official --size 1280*720, 81 frames, 40 steps, (4.0, 3.0)
        p = _filled(root)
        assert (p.width, p.height, p.num_frames, p.fps, p.num_inference_steps) == (1280, 720, 81, 16, 40)
        assert (p.guidance_scale, p.guidance_scale_2) == (4.0, 3.0)
    for root in wan22_ti2v_dirs:  # TI2V-5B: 1280x704, 121 frames at 24 fps, 50 steps
        p = _filled(root)
        assert (p.width, p.height, p.num_frames, p.fps, p.num_inference_steps) == (1280, 704, 121, 24, 50)


def test_given_sizes_win(wan22_ti2v_dirs):
    p = prepare_request(detect(wan22_ti2v_dirs[0]), SamplingParams(prompt="a cat", height=704, width=1280, num_frames=5))
    assert p.num_frames == 5
