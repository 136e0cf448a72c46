"""Out of memory during a run: one line naming the stage and what to lower; nothing written."""

from __future__ import annotations

import weakref

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.cli.main import main
from lightx2v.errors import ResourceError
from lightx2v.pipelines.wan import WanPipeline
from lightx2v.runtime.oom import is_out_of_memory, out_of_memory_as_error

CUDA_OOM = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which "
            "1.02 GiB is free.")
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 6710886400 bytes. Error code 12 (Cannot allocate memory)")


def test_a_real_allocator_failure_becomes_one_line():
    # 1 PiB: more than any address space, so torch's CPU allocator refuses at once (nothing is touched)
    with pytest.raises(ResourceError) as e, out_of_memory_as_error("VAE decode", "cpu", "64x64, 9 frames"):
        torch.empty(1 << 50, dtype=torch.uint8)
    assert str(e.value) == ("out of memory on cpu during the VAE decode (64x64, 9 frames) (it asked for "
                            "1125899906842624 bytes more): lower the size or the number of frames (the VAE decode "
                            "holds the whole video)")
    assert e.value.exit_code == 3 and e.value.__suppress_context__


def test_what_counts_as_out_of_memory_and_what_passes():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError(CUDA_OOM)) and is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(MemoryError("Unable to allocate 3.00 GiB for an array"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    # anything else passes untouched
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), out_of_memory_as_error("denoise", "cpu"):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    with out_of_memory_as_error("denoise", "cpu"):
        pass


def test_the_stage_tensors_are_let_go():
    refs = []

    def stage():
        activations = torch.ones(1000)
        refs.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    words = r"during the denoise \(it asked for 20\.00 GiB more\): lower the size"
    with pytest.raises(ResourceError, match=words) as e, out_of_memory_as_error("denoise", "cpu"):
        stage()
    assert refs[0]() is None  # the frames holding the stage's tensors were dropped with the traceback
    assert e.value.__context__.__traceback__ is None


@pytest.fixture(scope="module")
def pipe(tiny_official_dir):
    return LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


@pytest.mark.parametrize("attr, exc, stage, words", [
    ("encode_prompt", RuntimeError(CPU_OOM), "text encoder", "(it asked for 6710886400 bytes more): the weights nearly fill it"),
    ("model_fn", MemoryError(), "denoise", ": lower the size or the number of frames, or use quantization"),
    ("decode", torch.cuda.OutOfMemoryError(CUDA_OOM), "VAE decode", "(it asked for 20.00 GiB more): lower the size"),
])
def test_each_stage_names_itself(pipe, tmp_path, monkeypatch, attr, exc, stage, words):
    monkeypatch.setattr(pipe.pipeline, attr, _raise(exc))
    out = tmp_path / "v.mp4"
    with pytest.raises(ResourceError) as e:
        pipe.generate(prompt="a fox", height=32, width=48, num_frames=5, num_inference_steps=2, output_path=out)
    assert str(e.value).startswith(f"out of memory on cpu during the {stage} (48x32, 5 frames)") and words in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_out_of_memory_is_exit_3_and_one_line(tiny_official_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(WanPipeline, "decode", _raise(torch.cuda.OutOfMemoryError(CUDA_OOM)))
    out = tmp_path / "v.mp4"
    rc = main(["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--size", "48x32",
               "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lightx2v: error: out of memory on cpu during the VAE decode (48x32, 5 frames)")
    assert not out.exists()
