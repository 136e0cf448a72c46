"""Several ranks (lightx2v.runtime.parallel) on the CPU with gloo: 2 processes started once for the
module (tests/runtime/parallel_worker.py runs every case in that one launch), each case's output
against the one-process run within 1e-5 (fp32, tiny Wan2.1): Ulysses 2 (a padded token count too),
CFG parallel, each with a feature cache (first-block, TeaCache, TaylorSeer) and w8a8 quantization,
Ulysses on the step-distilled preset and with block offload, Wan2.2 A14B's expert switch with
per-expert scales under CFG parallel and Ulysses, Wan2.2 TI2V image-to-video's per-token timesteps
under Ulysses; then one rank failing stops both with one message. The checks that need no second
process (degrees, groups, config) run in this process. 4 ranks (CFG x Ulysses with a cache and
compile, ring): test_parallel_more.py; the CLI under torchrun: tests/cli/test_parallel_cli.py."""

from __future__ import annotations

import pytest
import torch

from lightx2v.config import EngineConfig, ParallelConfig
from lightx2v.errors import InputError
from tests.runtime.parallel_launch import check_case, launch_workers


CASES = ("ulysses", "ulysses_padded", "cfg", "ulysses_frames", "ulysses_firstblock", "ulysses_teacache",
         "cfg_taylorseer", "ulysses_quant", "cfg_quant", "ulysses_distill", "ulysses_block_offload",
         "wan22_cfg_experts", "wan22_ulysses_experts", "wan22_ti2v_image_ulysses")


def _has_vae_parallel() -> bool:
    try:
        import lightx2v.runtime.parallel.vae  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def launch(tmp_path_factory, wan22_t2v_dirs, wan22_ti2v_dirs):
    """Both ranks run every case of CASES, then the error case; (out_dir, [(returncode, stderr)], seconds)."""
    from lightx2v.models.wan.tiny import write_official_checkpoint

    root = tmp_path_factory.mktemp("parallel")
    cases = CASES + ("cfg_random_seed",) + (("ulysses_vae_parallel",) if _has_vae_parallel() else ())
    return launch_workers(root, {"wan21": str(write_official_checkpoint(root / "wan21")), "cases": cases,
                                 "wan22_t2v": str(wan22_t2v_dirs[1]), "wan22_ti2v": str(wan22_ti2v_dirs[1]),
                                 "error_case": True})


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one(launch, name):
    check_case(launch, name)


def test_only_rank_0_returns_frames(launch):
    out, _, _ = launch
    got = [torch.load(out / f"ulysses_frames.{r}.pt", weights_only=False) for r in range(2)]
    assert got[0]["out"].ndim == 4 and got[0]["out"].shape[-1] == 3  # frames [F, H, W, 3] on rank 0
    assert got[1]["out"].ndim == 5  # rank 1: its latents only, no decode, no path
    assert got[1]["path"] is None


def test_a_random_seed_is_rank_0s_on_every_rank(launch):
    out, _, _ = launch
    got = [torch.load(out / f"cfg_random_seed.{r}.pt", weights_only=False) for r in range(2)]
    assert got[0]["seed"] == got[1]["seed"] is not None
    assert torch.equal(got[0]["out"], got[1]["out"])  # the same noise, so the same latents after the CFG steps


def test_vae_parallel_decodes_on_both_ranks(launch):
    if not _has_vae_parallel():
        pytest.skip("lightx2v.runtime.parallel.vae is not in this build (branch ringvae)")
    out, _, _ = launch
    ref = torch.load(out / "ulysses_vae_parallel.ref.pt", weights_only=False)["out"]
    got = [torch.load(out / f"ulysses_vae_parallel.{r}.pt", weights_only=False) for r in range(2)]
    assert got[0]["out"].shape == ref.shape and got[1]["path"] is None and got[1]["out"].ndim == 5
    # two pieces blended over their overlap, as the tiled decode: near the whole-frame decode, not equal to it
    # (random tiny weights are a worst case for the seams; tests/runtime/test_parallel_vae.py bounds it alike)
    rel = float((got[0]["out"] - ref).norm() / ref.norm())
    assert 0 < rel < 0.15, rel


def test_error_on_one_rank_stops_both_with_one_message(launch):
    out, results, seconds = launch
    assert all((out / f"done.{r}").exists() for r in range(2)), [e[-2000:] for _, e in results]
    codes = [c for c, _ in results]
    assert codes == [1, 1], codes
    text = "".join(e for _, e in results)
    assert text.count("lightx2v: error: rank 1 failed: RuntimeError: injected failure on rank 1") == 1, text[-3000:]
    assert "rank finished without the failure" not in text
    print(f"2-rank launch: {seconds:.1f} s")


# ---- in this process: no second rank needed


def test_config_checks_degrees():
    assert ParallelConfig(cfg_parallel=True, ulysses=2, ring=2).world == 8
    assert not ParallelConfig().enabled and ParallelConfig(vae_parallel=True).enabled
    with pytest.raises(InputError, match="ulysses must be an integer >= 1"):
        ParallelConfig(ulysses=0)
    with pytest.raises(InputError, match="cfg_parallel runs one CFG branch per rank"):
        EngineConfig(device="cpu", cfg_mode="batched", parallel=ParallelConfig(cfg_parallel=True))


@pytest.mark.parametrize("attention", ["sage8", "self=fa3_fp8,cross=auto", "self=sage_attn,cross=sdpa_cudnn"])
def test_an_8bit_self_attention_is_refused_under_ring(attention):
    # the ring computes each block exactly; an 8-bit self-attention would silently not be used
    name = attention.split(",")[0].removeprefix("self=")
    with pytest.raises(InputError, match=rf"attention self={name} cannot run under ring attention.*ulysses"):
        EngineConfig(device="cpu", attention=attention, parallel=ParallelConfig(ulysses=2, ring=2))
    assert EngineConfig(device="cpu", attention=attention, parallel=ParallelConfig(ulysses=2)).attention_for("self") == name
    assert EngineConfig(device="cpu", attention="self=auto,cross=sage8", parallel=ParallelConfig(ring=2)).parallel.ring == 2


def test_degree_without_torchrun_is_an_error(monkeypatch):
    from lightx2v.api import make_engine

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match=r"ulysses 2 .* need 2 processes: launch with torchrun"):
        make_engine(device="cpu", dtype="fp32", ulysses=2)


def test_world_mismatch_and_heads_before_loading(monkeypatch, tmp_path):
    from lightx2v.loading.detect import detect
    from lightx2v.models.wan.tiny import write_official_checkpoint
    from lightx2v.runtime.parallel import check_parallel

    mc = detect(write_official_checkpoint(tmp_path / "m"))  # 2 heads; configs only, no weight read
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match=r"= 2, but the launch has 4 processes"):
        check_parallel(mc, ParallelConfig(ulysses=2))
    with pytest.raises(InputError, match=r"ulysses 4 does not divide the model's 2 attention heads; possible: 1, 2$"):
        check_parallel(mc, ParallelConfig(ulysses=4))
    check_parallel(mc, ParallelConfig(cfg_parallel=True, ulysses=2))  # 2 x 2 = 4: fine
    with pytest.raises(InputError, match=r"= 1, but the launch has 4 processes"):  # the VAE split alone: no
        check_parallel(mc, ParallelConfig(vae_parallel=True))


def test_rank_layout_ulysses_inside_ring_inside_cfg():
    from lightx2v.runtime.parallel.state import rank_groups

    g = rank_groups(cfg=2, ulysses=2, ring=2)
    assert g["sp"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert g["ulysses"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g["ring"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g["cfg"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_a_family_without_a_parallel_pipeline_is_refused_before_loading(monkeypatch):
    from types import SimpleNamespace

    from lightx2v.runtime.parallel import check_parallel

    class OnePipeline:  # no `parallel_ready`: its loop does not read pipeline.parallel
        pass

    spec = SimpleNamespace(title="Qwen-Image", pipeline=lambda: OnePipeline)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="Qwen-Image pipelines do not run on several GPUs yet"):
        check_parallel(SimpleNamespace(spec=spec, dit=SimpleNamespace(num_heads=24)), ParallelConfig(cfg_parallel=True))
