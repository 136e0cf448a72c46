"""The pipeline's streamed mp4 save (EngineConfig.stream_save, on by default): the file and
result.frames are those of the save after the decode; an error in the decode stops the encoder
and leaves no file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lightx2v import LightX2V
from lightx2v.io import stream as stream_mod

KW = dict(prompt="a red fox in the snow", height=32, width=48, num_frames=9, num_inference_steps=1, seed=3)


def _decoded(path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        w, h = next(reader)["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    finally:
        reader.close()


@pytest.fixture(scope="module")
def pipe(tiny_official_dir):
    return LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False)


def _spy(monkeypatch) -> list:
    procs, real = [], stream_mod.start_encoder

    def start(cmd, log):
        procs.append(real(cmd, log))
        return procs[-1]

    monkeypatch.setattr(stream_mod, "start_encoder", start)
    return procs


def test_the_streamed_file_and_frames_are_the_saved_ones(pipe, tmp_path, monkeypatch):
    procs = _spy(monkeypatch)
    assert pipe.pipeline.engine.stream_save
    streamed = pipe.generate(output_path=tmp_path / "s.mp4", **KW)
    assert len(procs) == 1 and procs[0].returncode == 0
    monkeypatch.setattr(pipe.pipeline, "engine", dataclasses.replace(pipe.pipeline.engine, stream_save=False))
    saved = pipe.generate(output_path=tmp_path / "n.mp4", **KW)
    assert len(procs) == 1  # not streamed
    np.testing.assert_array_equal(_decoded(streamed.path), _decoded(saved.path))
    np.testing.assert_array_equal(streamed.frames, saved.frames)  # float32 [F, H, W, 3], as before
    assert streamed.frames.dtype == np.float32 and streamed.frames.shape == (9, 32, 48, 3)
    assert {"vae_decode", "save"} <= set(streamed.timings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.mp4", "n.mp4.json", "s.mp4", "s.mp4.json"]


def test_other_formats_are_not_streamed(pipe, tmp_path, monkeypatch):
    procs = _spy(monkeypatch)
    out = pipe.generate(output_path=tmp_path / "v.gif", **KW)
    assert procs == [] and Path(out.path).exists()


def test_an_error_in_the_decode_kills_the_encoder_and_leaves_no_file(pipe, tmp_path, monkeypatch):
    procs = _spy(monkeypatch)
    vae = pipe.pipeline.vae
    real = vae.decode_chunks

    def failing(latents, *a, **k):
        chunks = real(latents, *a, **k)
        yield next(chunks)
        raise RuntimeError("decode failed")

    monkeypatch.setattr(vae, "decode_chunks", failing)
    with pytest.raises(RuntimeError, match="decode failed"):
        pipe.generate(output_path=tmp_path / "o" / "v.mp4", **KW)
    assert len(procs) == 1 and procs[0].returncode is not None  # killed and reaped
    assert list((tmp_path / "o").iterdir()) == []
