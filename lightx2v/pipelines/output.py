"""After the denoise: the VAE decode and the output file, for every pipeline.

`decode_and_write` fills `result.frames` (and `.path`) and times `vae_decode` and `save`. An mp4
file (engine.stream_save, the default) is encoded while the VAE decodes (lightx2v.io.stream);
other formats are written after it (lightx2v.io.output.save). Both follow io/output.py's rules.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Optional

import torch

from lightx2v.config import FILE_OUTPUT_TYPES, EngineConfig, SamplingParams
from lightx2v.errors import NonFiniteError
from lightx2v.pipelines.base import (
    GenerationResult, video_to_frames, video_to_uint8, video_to_uint8_tensor, video_to_unit,
)


def decode_and_write(pipe, p: SamplingParams, latents: torch.Tensor, seed: Optional[int],
                 size: tuple[int, int], result: GenerationResult) -> None:
    """Decode, fill result.frames (and .path), time both (`vae_decode`, `save`).

    An mp4 file (engine.stream_save, the default) is encoded while the VAE decodes
    (lightx2v.io.stream): each latent frame's pixels go to the encoder as uint8 from the
    decoder's device; `save` is then the wall time from the end of the decode to the file in
    place (the encoder's tail, overlapped with result.frames' copy to the host). Other formats
    are encoded after the decode (`save`: that encode). An error (a NaN decode, an interrupt)
    stops the encoder and leaves no file."""
    timings = result.timings
    save_kw = dict(fps=p.fps, overwrite=p.overwrite, metadata=pipe.output_metadata(p, seed, size),
                   default_stem=default_output_stem(pipe.task, seed), crf=p.crf)
    stream = open_stream(pipe.engine, p, size, save_kw)
    try:
        t2 = time.perf_counter()
        with pipe._stage("VAE decode", p):
            if stream is None:
                video = pipe.decode(latents)
            else:
                video = pipe.decode(latents, on_chunk=lambda chunk: stream.write(video_to_uint8_tensor(chunk)))
        if bool(torch.isnan(video).any()):  # decode clamps, so only NaN can come out
            raise NonFiniteError("the VAE decode produced NaN pixels from finite latents: the VAE's weights may be "
                                 "damaged (check the VAE file, or download it again)")
        timings["vae_decode"] = pipe._lap(t2)
        t3 = time.perf_counter()
        unit = video_to_unit(video)  # normalised once, for the frames and the file
        frames = video_to_frames(video, unit)
        result.frames = torch.from_numpy(frames) if p.output_type == "pt" else frames
        if p.output_type == "pil":  # one frame asked for as an image (SamplingParams: num_frames 1)
            result.images = to_pil(frames)
        if stream is not None:
            result.path = str(stream.close())
            timings["save"] = pipe._lap(t3)
        elif p.output_type in FILE_OUTPUT_TYPES:
            from lightx2v.io.output import save

            t3 = time.perf_counter()
            result.path = str(save(video_to_uint8(video, unit), p.output_path or "outputs/",
                                   output_type=p.output_type, **save_kw))
            timings["save"] = pipe._lap(t3)
    except BaseException as exc:
        if stream is not None:
            stream.abort(exc)
        raise

def open_stream(engine: EngineConfig, p: SamplingParams, size: tuple[int, int], save_kw: dict):
    """The streamed writer of an mp4 output (None: not streamed: another format, no file, or
    engine.stream_save off)."""
    if p.output_type not in FILE_OUTPUT_TYPES or not engine.stream_save:
        return None
    from lightx2v.io.output import file_format
    from lightx2v.io.stream import STREAM_FORMATS, VideoStream

    path = p.output_path or "outputs/"
    if file_format(p.output_type, path) not in STREAM_FORMATS:
        return None
    stream = VideoStream(path, output_type=p.output_type, num_frames=p.num_frames, **save_kw)
    return stream.open(width=size[1], height=size[0])


def default_output_stem(task: str, seed: int | None) -> str:
    """The file name (without extension) a run writes when given a folder, or no output path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"wan_{task}_{stamp}_seed{seed}"


# ---- images (an image family: Qwen-Image) --------------------------------------------------------
# Images are first class: `GenerationResult.images` holds them (a list of PIL images, or for output_type
# "np" / "pt" float32 [N, H, W, 3] in [0, 1]); `frames` keeps the same pixels for code that reads frames.

ImageResult = GenerationResult  # the name image pipelines used before `images` moved onto GenerationResult


def to_pil(frames) -> list:
    """float32 [N, H, W, 3] in [0, 1] -> N RGB PIL images (rounded as every writer here rounds)."""
    from PIL import Image

    return [Image.fromarray((f * 255.0 + 0.5).astype("uint8"), "RGB") for f in frames]


def decode_and_write_images(pipe, p: SamplingParams, latents: torch.Tensor, seed: Optional[int],
                            size: tuple[int, int], result: GenerationResult) -> None:
    """Decode image latents [N, z, 1, h, w], fill result.images / .frames (and .path / .paths for a
    file type: png, webp, jpeg; N images as NAME_0.png ..., all written atomically by io/output.py's
    rules), time `vae_decode` and `save`."""
    timings = result.timings
    t2 = time.perf_counter()
    with pipe._stage("VAE decode", p):
        video = pipe.decode(latents)  # [N, 3, 1, H, W] in [-1, 1]
    if bool(torch.isnan(video).any()):
        raise NonFiniteError("the VAE decode produced NaN pixels from finite latents: the VAE's weights may be "
                             "damaged (check the VAE file, or download it again)")
    timings["vae_decode"] = pipe._lap(t2)
    unit = (video[:, :, 0].float() / 2 + 0.5).clamp(0, 1)  # [N, 3, H, W], as diffusers' postprocess
    frames = unit.permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, 3] float32
    result.frames = torch.from_numpy(frames) if p.output_type == "pt" else frames
    result.images = result.frames if p.output_type in ("np", "pt") else to_pil(frames)
    if p.output_type in FILE_OUTPUT_TYPES:
        from lightx2v.io.output import save_images

        t3 = time.perf_counter()
        stem = default_output_stem(pipe.task, seed).replace("wan", pipe.model_config.family, 1)
        paths = save_images((frames * 255.0 + 0.5).astype("uint8"), p.output_path or "outputs/",
                            output_type=p.output_type, overwrite=p.overwrite,
                            metadata=pipe.output_metadata(p, seed, size), default_stem=stem)
        result.paths = [str(x) for x in paths]
        result.path = result.paths[0]
        timings["save"] = pipe._lap(t3)
