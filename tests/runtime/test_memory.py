"""Before a run: the model's hard limits, the trained range (force), and the memory estimate."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import EngineConfig, SamplingParams
from lightx2v.errors import InputError, ResourceError
from lightx2v.loading.detect import detect
from lightx2v.models.wan.dit import WanDiTConfig
from lightx2v.models.wan.t5 import UMT5Config
from lightx2v.models.wan.vae import WanVAEConfig
from lightx2v.runtime import memory
from lightx2v.runtime.memory import check_request, estimate

CPU32 = EngineConfig(device="cpu", dtype=torch.float32)
BF16 = EngineConfig(device="cpu", dtype=torch.bfloat16)
GB = 10**9


@pytest.fixture(scope="module")
def mc(tiny_official_dir):
    return detect(tiny_official_dir)


@pytest.fixture
def free(monkeypatch):
    """Make the device have `free.bytes` free (what this machine has would make the tests flaky)."""

    class Free:
        bytes = 64 * GB

    monkeypatch.setattr(memory, "available_bytes", lambda device, loaded=False: Free.bytes)
    return Free


def _released(mc, size: str):
    """The tiny folder's config with a released Wan2.1's architecture (nothing is built but on meta)."""
    dim, ffn, heads, layers = {"1.3B": (1536, 8960, 12, 30), "14B": (5120, 13824, 40, 40)}[size]
    dit = WanDiTConfig(model_type="t2v", in_dim=16, dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers)
    return dataclasses.replace(mc, arch=dataclasses.replace(mc.arch, dit=dit, text_encoder=UMT5Config(), vae=WanVAEConfig()))


@pytest.mark.parametrize("height, width, frames, steps, field, words", [
    (100000, 100000, 81, None, "height", "needs 6,250 DiT positions; this model's position table covers 1024 (height at most 16384)"),
    (16000, 16000, 81, None, "height", "278x the 1280x720 Wan2.1 was trained on; at most 4x (3,686,400 pixels"),
    (480, 832, 1000001, None, "num_frames", "needs 250,001 DiT positions; this model's position table covers 1024 (num_frames at most 4093)"),
    (480, 832, 81, 100000000, "num_inference_steps", "more than the scheduler's 1000 training timesteps; at most 1000 unless forced"),
])
def test_reported_requests_are_refused_at_once(mc, height, width, frames, steps, field, words):
    t = time.perf_counter()
    with pytest.raises(InputError) as e:
        check_request(mc, CPU32, height=height, width=width, num_frames=frames, steps=steps)
    assert time.perf_counter() - t < 0.5
    assert words in str(e.value) and e.value.field == field and e.value.exit_code == 2


def test_force_lets_the_trained_range_through_but_not_memory(mc, free, monkeypatch):
    with pytest.raises(InputError, match=r"2560x1456 is 3,727,360 pixels a frame, 4x the 1280x720 .* unless forced"):
        check_request(mc, CPU32, height=1456, width=2560, num_frames=81)
    with pytest.raises(InputError, match="num_frames 325 is far beyond the 81 frames Wan2.1 was trained on; at most 324"):
        check_request(mc, CPU32, height=480, width=832, num_frames=325)
    assert check_request(mc, CPU32, height=1456, width=2560, num_frames=81, force=True).need < free.bytes
    check_request(mc, CPU32, height=480, width=832, num_frames=325, force=True)
    check_request(mc, CPU32, height=480, width=832, num_frames=81, steps=5000, force=True)
    # a true memory refusal stays, and is answered without building a model (weights come last)
    monkeypatch.setattr(memory, "weight_bytes", lambda *a: pytest.fail("weights read for a request that cannot fit"))
    t = time.perf_counter()
    with pytest.raises(ResourceError) as e:
        check_request(mc, CPU32, height=16000, width=16000, num_frames=81, force=True)
    assert time.perf_counter() - t < 0.5 and e.value.exit_code == 3
    assert str(e.value) == ("16000x16000, 81 frames needs at least 636.3 GB on cpu for the VAE decode alone, "
                            "64.0 GB is free there; lower the size or the number of frames")
    with pytest.raises(InputError, match="position table"):  # a hard limit of the model: force does not help
        check_request(mc, CPU32, height=100000, width=100000, num_frames=81, force=True)


def test_weights_count_and_what_to_lower(mc, free):
    big = _released(mc, "14B")
    est = estimate(big, BF16, height=720, width=1280, num_frames=81)
    free.bytes = est.need - 1
    with pytest.raises(ResourceError, match=r"^1280x720, 81 frames needs at least 59\.9 GB on cpu \(weights 40\.8 GB "
                                            r"\+ VAE decode 19\.1 GB\), 59\.9 GB is free there; lower the size"):
        check_request(big, BF16, height=720, width=1280, num_frames=81)
    free.bytes = 30 * GB
    with pytest.raises(ResourceError, match="the weights alone do not fit: use quantization"):
        check_request(big, BF16, height=480, width=832, num_frames=81)
    est = check_request(big, BF16, height=480, width=832, num_frames=81, loaded=True)  # loaded: activations only
    assert est.weights == 0 and est.components == {} and est.need == max(est.stages.values())


def test_weights_of_the_released_files(mc, free):
    c = estimate(_released(mc, "1.3B"), BF16, height=480, width=832, num_frames=81).components
    assert 11.30 * GB < c["text_encoder"] < 11.42 * GB   # models_t5_umt5-xxl-enc-bf16.pth holds 11.36 GB
    assert 0.50 * GB < c["vae"] < 0.51 * GB              # Wan2.1_VAE.pth: 127 M parameters, kept in fp32
    assert 2.80 * GB < c["dit"] < 2.95 * GB              # 1.42 B parameters in bf16, norms / modulations fp32
    big = _released(mc, "14B")
    dit = estimate(big, BF16, height=480, width=832, num_frames=81).components["dit"]
    int8 = estimate(big, dataclasses.replace(BF16, quant="w8a8-int8"), height=480, width=832, num_frames=81).components["dit"]
    assert 28.5 * GB < dit < 29.5 * GB and 0.5 < int8 / dit < 0.53  # 1 byte a block weight, the rest bf16
    # a LoRA merged before quantizing needs the float DiT whole first
    merged = dataclasses.replace(BF16, quant="w8a8-int8", lora=dataclasses.replace(BF16.lora, loras=(("x", 1.0),)))
    assert estimate(big, merged, height=480, width=832, num_frames=81).components["dit"] == dit


@pytest.mark.parametrize("size, engine, height, width, frames, stage, measured", [
    # peaks measured on an H200 (torch.cuda.max_memory_allocated; runtime/memory.py's docstring)
    ("1.3B", BF16, 480, 832, 81, "denoise", 1.933e9),
    ("1.3B", CPU32, 720, 1280, 81, "denoise", 7.319e9),
    ("14B", BF16, 720, 1280, 81, "denoise", 11.656e9),
    ("14B", CPU32, 480, 832, 81, "denoise", 6.336e9),
    ("1.3B", BF16, 480, 832, 21, "VAE decode", 9.408e9),
    ("1.3B", BF16, 720, 1280, 21, "VAE decode", 21.699e9),
])
def test_activations_follow_the_measured_peaks(mc, free, size, engine, height, width, frames, stage, measured):
    # measured on 2-block DiTs: their kept cross-attention K/V (context_kv) were a few MB, not the whole model's
    engine = dataclasses.replace(engine, context_kv=False)
    est = estimate(_released(mc, size), engine, height=height, width=width, num_frames=frames)
    assert est.stages[stage] == pytest.approx(memory.LOWER_BOUND * measured, rel=0.03)


def test_kept_context_kv_and_chunking_change_the_denoise(mc, free):
    big = _released(mc, "14B")
    size = dict(height=480, width=832, num_frames=81, guidance_scale=5.0)
    kept = estimate(big, BF16, **size).stages["denoise"]
    free_kv = estimate(big, dataclasses.replace(BF16, context_kv=False), **size).stages["denoise"]
    # 40 blocks x K and V x 512 text tokens x 5120 x bf16, for each CFG branch
    assert kept - free_kv == pytest.approx(memory.LOWER_BOUND * 2 * 40 * 2 * 512 * 5120 * 2, rel=1e-6)
    chunked = estimate(big, dataclasses.replace(BF16, context_kv=False, chunk_tokens=2048), **size).stages["denoise"]
    tokens = 21 * 30 * 52
    assert chunked == pytest.approx(memory.LOWER_BOUND * (12 * 5120 * tokens + 30 * 5120 * 2048), rel=1e-6)
    assert chunked < 0.5 * free_kv


def test_attention_backend_and_cfg_change_the_denoise(mc, free):
    def denoise(engine, guidance=None):
        engine = dataclasses.replace(engine, context_kv=False)  # the kept K/V: test_kept_context_kv_...
        return estimate(mc, engine, height=480, width=832, num_frames=81, guidance_scale=guidance).stages

    base = denoise(CPU32)
    tokens = 21 * 30 * 52
    math_ = denoise(dataclasses.replace(CPU32, attention="reference"))["denoise"] - base["denoise"]
    assert math_ == pytest.approx(memory.LOWER_BOUND * 8 * mc.dit.num_heads * tokens**2, rel=1e-6)  # [heads, L, L] x2, fp32
    batched = denoise(dataclasses.replace(CPU32, cfg_mode="batched"))
    assert batched["denoise"] == pytest.approx(2 * base["denoise"], rel=1e-6)
    no_cfg = denoise(dataclasses.replace(CPU32, cfg_mode="batched"), guidance=1.0)
    assert no_cfg["denoise"] == base["denoise"] and no_cfg["text encoder"] == pytest.approx(base["text encoder"] / 2, abs=1)
    assert "VAE decode" not in estimate(mc, CPU32, height=480, width=832, num_frames=81, decode=False).stages
    free.bytes = 1  # (the i2v CLIP config of the tiny t2v folder is not there: only the stages are compared)
    i2v = estimate(dataclasses.replace(mc, task="i2v"), CPU32, height=480, width=832, num_frames=81).stages
    assert i2v["image encoder"] == i2v["VAE decode"] == base["VAE decode"]


def test_what_the_host_has(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       24683656 kB\nMemFree: 1 kB\nMemAvailable:   21971216 kB\n")
    assert memory._meminfo_available(str(tmp_path / "meminfo")) == 21971216 * 1024
    assert memory._meminfo_available(str(tmp_path / "missing")) is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    assert memory._cgroup_free(str(v2)) is None  # no limit
    (v2 / "memory.max").write_text("8000000000\n")
    (v2 / "memory.current").write_text("3000000000\n")
    (v2 / "memory.stat").write_text("anon 2000000000\ninactive_file 500000000\nactive_file 10\n")
    assert memory._cgroup_free(str(v2)) == 5_500_000_000  # limit - usage + reclaimable cache
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory._cgroup_free(str(v1)) is None  # v1's "unlimited"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("4000000000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("1000000000\n")
    (v1 / "memory" / "memory.stat").write_text("cache 7\ntotal_inactive_file 1000\n")
    assert memory._cgroup_free(str(v1)) == 3_000_001_000
    assert memory._cgroup_free(str(tmp_path / "none")) is None
    assert memory.available_bytes(torch.device("cpu")) == memory.host_available_bytes() > 0


@pytest.fixture(scope="module")
def pipe(tiny_official_dir):
    return LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)


def test_the_pipeline_refuses_before_any_work(pipe, free, monkeypatch):
    monkeypatch.setattr(pipe.pipeline, "encode_prompt", lambda *a: pytest.fail("the text encoder ran"))
    for kw, field in (({"height": 100000, "width": 100000}, "height"), ({"height": 16000, "width": 16000}, "height"),
                      ({"num_frames": 1000001}, "num_frames"), ({"num_inference_steps": 100000000}, "num_inference_steps")):
        t = time.perf_counter()
        with pytest.raises(InputError) as e:
            pipe.generate(prompt="a fox", output_type="latent", **kw)
        assert e.value.field == field and time.perf_counter() - t < 1, kw
    # past the trained range with force; then the memory estimate (weights in place) against a small device
    free.bytes = 10**8
    with pytest.raises(ResourceError, match=r"2560x1456, 81 frames needs at least 9\.3 GB more on cpu for the VAE decode, "
                                            r"0\.1 GB is free there"):
        pipe.run(SamplingParams(prompt="a fox", height=1456, width=2560, num_frames=81, force=True))


@pytest.mark.parametrize("extra, words", [
    (["--size", "100000x100000"], "--size height 100000 needs 6,250 DiT positions"),
    (["--size", "16000x16000"], "16000x16000 is 256,000,000 pixels a frame, 278x the 1280x720 Wan2.1 was trained on"),
    (["--frames", "1000001"], "--frames 1000001 needs 250,001 DiT positions"),
    (["--steps", "100000000"], "--steps 100000000 is more than the scheduler's 1000 training timesteps"),
    (["--size", "16000x16000", "--force"], "16000x16000, 81 frames needs at least 636.3 GB on cpu for the VAE decode alone"),
])
def test_cli_refuses_before_loading(tiny_official_dir, tmp_path, capsys, monkeypatch, free, extra, words):
    from lightx2v.cli.main import main
    from lightx2v.pipelines.wan import WanPipeline

    monkeypatch.setattr(WanPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "v.mp4"
    t = time.perf_counter()
    rc = main(["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--frames", "81",
               "--device", "cpu", "--dtype", "fp32", "--quiet", "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert time.perf_counter() - t < 1, "refused in well under a second"
    assert rc == (3 if "--force" in extra else 2) and err.count("\n") == 1 and words in err, err
    assert not out.exists()
