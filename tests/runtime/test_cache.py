"""The feature cache (lightx2v.runtime.cache): off at threshold 0, the counts each rule gives, each
rule against a hand computation on recorded inputs, state per generation / branch / expert, and the
combinations (batched CFG, quantization, dynamic LoRA, compile), through the API and the CLI."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightx2v import LightX2V
from lightx2v.engine_config import CacheConfig, EngineConfig
from lightx2v.errors import InputError
from lightx2v.runtime.cache import build_method, check_cache
from lightx2v.runtime.cache.base import BranchState, CachedBlocks
from lightx2v.runtime.cache.magcache import RATIOS, nearest_ratios
from lightx2v.runtime.cache.taylorseer import TaylorSeer
from lightx2v.runtime.cache.teacache import COEFFICIENTS

STEPS = 8


def _load(root, **kw):
    return LightX2V.from_pretrained(root, device="cpu", dtype="fp32", progress=False, **kw)


def _gen(pipe, seed=1, guidance=4.0, steps=STEPS):
    return pipe.generate(prompt="a fox in the snow", height=32, width=32, num_frames=5, num_inference_steps=steps,
                         seed=seed, guidance_scale=guidance, output_type="latent")


@pytest.fixture(scope="module")
def shared(tiny_official_dir):
    """One loaded fp32 pipeline; `_with` gives it a cache (the engine's step, applied alone) and a CFG mode."""
    return _load(tiny_official_dir)


@pytest.fixture(scope="module")
def plain(shared):
    return _gen(_with(shared, None))


def _with(pipe, cache, mode="sequential"):
    import dataclasses

    from lightx2v.runtime.cache import apply_cache

    p = pipe.pipeline
    p.engine = dataclasses.replace(p.engine, cfg_mode=mode, cache=CacheConfig.parse(cache))
    p.dit.block_runner = None
    apply_cache(p, p.engine.cache)
    return pipe


def _record(pipe) -> list:
    """[(branch, step, inputs, own wish, ran)] for every branch of every call, in order."""
    runner = pipe.pipeline.dit.block_runner
    method, log, wishes = runner.method, [], {}
    decide, commit = method.decide, method.commit

    def spy_decide(state, step, n, inputs):
        d = decide(state, step, n, inputs)
        wishes[state.branch] = (inputs, d.run)
        return d

    def spy_commit(state, d, ran):
        inputs, wish = wishes[state.branch]
        log.append((state.branch, len([e for e in log if e[0] == state.branch]), inputs, wish, ran))
        commit(state, d, ran)

    method.decide, method.commit = spy_decide, spy_commit
    return log


# ---------------------------------------------------------------- config


def test_cache_config_forms_and_errors():
    assert CacheConfig.parse("teacache") == CacheConfig("teacache")
    assert CacheConfig.parse("teacache:threshold=0.2,model=t2v-14b,ret_steps=false") == CacheConfig(
        "teacache", threshold=0.2, model="t2v-14b", ret_steps=False)
    assert CacheConfig.parse({"method": "taylorseer", "interval": 4, "order": 2}).order == 2
    assert EngineConfig(device="cpu", cache="magcache:max_skips=3").cache.max_skips == 3
    assert not EngineConfig(device="cpu").cache.enabled
    for bad, msg in (("fastcache", "must be one of"), ("taylorseer:threshold=0.1", "takes interval"),
                     ("teacache:thresh=0.1", "keys among"), ("teacache:threshold=-1", ">= 0"),
                     ("taylorseer:order=3", "1 or 2"), ("magcache:retention=2", "fraction"),
                     ({"method": "teacache", "speed": 1}, "unknown option")):
        with pytest.raises(InputError, match=msg):
            CacheConfig.parse(bad)


def test_refusals_before_loading():
    t2v14 = SimpleNamespace(family="wan2.1", task="t2v", dit=SimpleNamespace(dim=5120), distill=None,
                            spec=SimpleNamespace(title="Wan2.1"))
    assert check_cache(t2v14, CacheConfig("teacache")).model == "t2v-14b"
    assert check_cache(t2v14, CacheConfig("magcache")).threshold == 0.24  # the README's 14B command
    with pytest.raises(InputError, match="saves nothing on a step-distilled"):
        check_cache(SimpleNamespace(**{**vars(t2v14), "distill": "4-step"}), CacheConfig("firstblock"))
    i2v = SimpleNamespace(**{**vars(t2v14), "task": "i2v"})
    with pytest.raises(InputError, match="model=i2v-480p or model=i2v-720p"):
        check_cache(i2v, CacheConfig("teacache"))
    assert check_cache(i2v, CacheConfig("teacache", model="i2v-720p")).coefficients == COEFFICIENTS["i2v-720p"][0]
    wan22 = SimpleNamespace(**{**vars(t2v14), "family": "wan2.2", "spec": SimpleNamespace(title="Wan2.2")})
    with pytest.raises(InputError, match="are for Wan2.1 models; this is Wan2.2"):
        check_cache(wan22, CacheConfig("magcache"))
    assert check_cache(wan22, CacheConfig("taylorseer")).name == "taylorseer"  # needs no numbers
    with pytest.warns(UserWarning, match="t2v-1.3b coefficients on a checkpoint that looks like t2v-14b"):
        check_cache(t2v14, CacheConfig("teacache", model="t2v-1.3b"))


# ---------------------------------------------------------------- off and counts


@pytest.mark.parametrize("cache", ["teacache:threshold=0,model=t2v-1.3b", "teacache:threshold=0,model=t2v-14b",
                                   "magcache:threshold=0,model=t2v-14b", "firstblock:threshold=0",
                                   "taylorseer:interval=1"])
def test_threshold_zero_is_no_cache(shared, plain, cache):
    out = _gen(_with(shared, cache))
    assert torch.equal(out.latents, plain.latents)
    assert out.stats["model_calls"] == 2 * STEPS and out.stats["model_calls_skipped"] == 0


@pytest.mark.parametrize("cache, ran", [
    ("teacache:threshold=1e9,model=t2v-14b", 5),                  # ret_steps: steps 0-4 run, none at the end
    ("teacache:threshold=1e9,model=t2v-14b,ret_steps=false", 2),  # the first and the last step run
    ("magcache:threshold=1e9,model=t2v-14b,max_skips=2,retention=0.25", 4),  # 0, 1 (retention); 4, 7 (K=2)
    ("firstblock:threshold=1e9", 1),                              # only the first step runs the rest
    ("taylorseer:interval=3,warmup=2", 4),                        # 0, 1 (warm-up); 3, 6
])
def test_large_threshold_skips_what_the_rule_says(shared, cache, ran):
    for mode in ("sequential", "batched"):
        out = _gen(_with(shared, cache, mode))
        per_call = 2 if mode == "sequential" else 1  # branches per step as calls
        assert out.stats["model_calls"] == per_call * ran, (mode, out.stats)
        assert out.stats["model_calls_skipped"] == per_call * (STEPS - ran), (mode, out.stats)
        assert torch.isfinite(out.latents).all()


# ---------------------------------------------------------------- each rule by hand


@pytest.mark.parametrize("model, ret_steps", [("t2v-1.3b", False), ("t2v-14b", True)])
def test_teacache_rule_by_hand(shared, model, ret_steps):
    """Indicators recorded from the model; the poly1d-rescaled accumulation recomputed with numpy. (The
    tiny model's embeddings move far more per step than a real one's: with the 14B e0 polynomial the
    rescaled distances are negative here, so every step past the retained ones skips.)"""
    n, cache = 12, f"teacache:model={model},ret_steps={ret_steps}"
    probe = _with(shared, cache + ",threshold=1e9")
    log = _record(probe)
    _gen(probe, steps=n)
    ind = [getattr(i, "e0" if ret_steps else "e") for b, _, i, _, _ in log if b == "cond"]
    poly = np.poly1d(COEFFICIENTS[model][0 if ret_steps else 1])
    dist = [float(poly(((a - b).abs().mean() / b.abs().mean()).item())) for b, a in zip(ind, ind[1:])]
    ret, cutoff = (5, n) if ret_steps else (1, n - 1)
    threshold = float(np.median(np.abs(dist))) * 1.5
    expect, acc = [], 0.0
    for s in range(n):
        if s < ret or s >= cutoff:
            run, acc = True, 0.0
        else:
            acc += dist[s - 1]
            run = acc >= threshold
            acc = 0.0 if run else acc
        expect.append(run)
    assert False in expect and (ret_steps or True in expect[ret:cutoff])
    pipe = _with(shared, cache + f",threshold={threshold!r}")
    log = _record(pipe)
    out = _gen(pipe, steps=n)
    for branch in ("cond", "uncond"):
        assert [ran for b, _, _, _, ran in log if b == branch] == expect, branch
    assert out.stats["model_calls_skipped"] == 2 * expect.count(False)


def test_magcache_rule_by_hand(shared):
    """The published table, resampled as the reference does (numpy.round), walked by hand."""
    n, thr, k, r = STEPS, 0.02, 2, 0.25
    for branch, table in zip(("cond", "uncond"), RATIOS["t2v-14b"]):
        idx = np.round(np.arange(n) * (len(table) - 1) / (n - 1)).astype(int)
        assert nearest_ratios(table, n) == tuple(np.array(table)[idx])
    pipe = _with(shared, f"magcache:model=t2v-14b,threshold={thr},max_skips={k},retention={r}")
    log = _record(pipe)
    out = _gen(pipe)
    for bi, branch in enumerate(("cond", "uncond")):
        ratios = nearest_ratios(RATIOS["t2v-14b"][bi], n)
        expect, ratio, skips, err = [], 1.0, 0, 0.0
        for s in range(n):
            run = True
            if s >= int(n * r):
                ratio, skips = ratio * ratios[s], skips + 1
                err += abs(1 - ratio)
                run = not (err < thr and skips <= k)
            if run:
                ratio, skips, err = 1.0, 0, 0.0
            expect.append(run)
        assert [ran for b, _, _, _, ran in log if b == branch] == expect
        assert False in expect and expect[int(n * r):].count(True) > 0
    assert out.stats["model_calls_skipped"] == sum(1 for e in log if not e[4])


def test_firstblock_rule_by_hand(shared):
    """First-block residuals recorded; the decision replayed against the last computed one."""
    probe = _with(shared, "firstblock:threshold=1e9")
    log = _record(probe)
    _gen(probe)
    firsts = [i.first for b, _, i, _, _ in log if b == "cond"]
    d = [((a - firsts[0]).abs().mean() / firsts[0].abs().mean()).item() for a in firsts[1:]]
    threshold = float(np.median(d))
    pipe = _with(shared, f"firstblock:threshold={threshold!r}")
    log = _record(pipe)
    _gen(pipe)
    for branch in ("cond", "uncond"):
        rows = [(i.first, ran) for b, _, i, _, ran in log if b == branch]
        ref, expect = None, []
        for first, _ in rows:
            run = ref is None or ((first - ref).abs().mean() / ref.abs().mean()).item() > threshold
            ref = first if run else ref
            expect.append(run)
        assert [ran for _, ran in rows] == expect and True in expect[1:] and False in expect


def test_taylorseer_forecast_by_hand():
    """Order 1 forecasts a residual linear in the step exactly; order 2 is the references' backward
    divided differences, F2 = (F1(s1) - F1(s0)) / (s1 - s0), written out here for a quadratic."""
    x = torch.randn(1, 6, 4)
    a, b, c = (torch.randn(1, 6, 4) for _ in range(3))
    lin, quad = (lambda s: a + s * b), (lambda s: a + s * b + s * s * c)
    f1 = (quad(4) - quad(2)) / 2
    f2 = (f1 - (quad(2) - quad(1)) / 1) / 2
    for order, resid, want in ((1, lin, lin), (2, quad, lambda s: quad(4) + f1 * (s - 4) + f2 * (s - 4) ** 2 / 2)):
        ts, st = TaylorSeer(interval=4, warmup=3, order=order), BranchState("cond", origin=10)
        assert [ts.computes(s) for s in range(9)] == [True, True, True, False, True, False, False, False, True]
        for s in (0, 1, 2, 4):
            ts.store(st, 10 + s, x, x + resid(s))
        for s in (5, 6, 7):
            torch.testing.assert_close(ts.reuse(st, 10 + s, x), x + want(s), rtol=1e-4, atol=1e-4)
        assert len(st.stored[0]) == order + 1 and st.stored[1] == 4


# ---------------------------------------------------------------- state


class _Toy:
    """A stand-in DiT: every range of blocks maps x to 2x + 1; counts the run_blocks calls."""

    def __init__(self):
        self.step_context, self.runs = None, 0

    def run_blocks(self, x, **kw):
        self.runs += 1
        return x * 2 + 1


def test_branches_and_generations_keep_their_own_state():
    from lightx2v.pipelines.base import StepContext

    toy, runner = _Toy(), CachedBlocks(build_method(CacheConfig("firstblock", threshold=1e9)))
    e = torch.zeros(1, 1, 4)
    kw = dict(e=e, e0=e[:, :, None].expand(1, 1, 6, 4), kv=[()] * 2, rope=None)
    xc, xu = torch.full((1, 3, 4), 1.0), torch.full((1, 3, 4), 10.0)
    outs = {}
    for step in (0, 1):
        for branch, x in (("cond", xc), ("uncond", xu)):
            toy.step_context = StepContext(step, 2, 1.0, branch)
            outs[branch, step] = runner(toy, x + step, **kw)
    # step 1 reuses each branch's own rest-of-stack residual (block 0: x*2+1, the rest: the same map)
    for branch, x in (("cond", xc), ("uncond", xu)):
        x1 = (x + 1) * 2 + 1
        torch.testing.assert_close(outs[branch, 1], x1 + (x * 2 + 1) * 2 + 1 - (x * 2 + 1))
    assert runner.skipped == 2 and toy.runs == 2 * 2 + 2 and set(runner.states) == {"cond", "uncond"}
    runner.reset()
    assert not runner.states and runner.skipped == 0


def test_no_leak_between_generations(shared):
    pipe = _with(shared, "teacache:model=t2v-14b,threshold=1e9")
    first, again = _gen(pipe, seed=1), _gen(pipe, seed=2)
    fresh = _gen(_with(shared, "teacache:model=t2v-14b,threshold=1e9"), seed=2)  # a new runner
    assert torch.equal(again.latents, fresh.latents) and again.stats == fresh.stats
    assert not torch.equal(first.latents, again.latents)
    assert not pipe.pipeline.dit.block_runner.states  # dropped at the end of the generation


def test_batched_cfg_matches_sequential(shared):
    """teacache's indicator is the same for both branches: joint and per-branch decisions agree."""
    cache = "teacache:model=t2v-1.3b,ret_steps=false,threshold=700"
    seq = _gen(_with(shared, cache))
    bat = _gen(_with(shared, cache, "batched"))
    torch.testing.assert_close(bat.latents, seq.latents, rtol=1e-4, atol=1e-4)
    assert seq.stats["model_calls_skipped"] == 2 * bat.stats["model_calls_skipped"] > 0
    assert bat.stats["model_calls"] < STEPS


# ---------------------------------------------------------------- combinations


def test_with_quantization(tiny_official_dir):
    pipe = _load(tiny_official_dir, quant="w8a8-int8", cache="magcache:threshold=0,model=t2v-14b")
    assert "cache: dit: magcache" in " ".join(pipe.pipeline.engine_log)
    q0 = _gen(pipe, steps=4)
    assert torch.equal(_gen(_with(pipe, None), steps=4).latents, q0.latents)
    qc = _gen(_with(pipe, "firstblock:threshold=1e9"), steps=4)
    assert qc.stats["model_calls"] == 2 and qc.stats["model_calls_skipped"] == 6


@pytest.mark.parametrize("cache", ["firstblock:threshold=1e9", "taylorseer"])
def test_with_block_offload(tiny_official_dir, shared, cache):
    # the skipped blocks are not fetched; the runs between skips find their blocks as without offload
    ref = _gen(_with(shared, cache), steps=4)
    pipe = _load(tiny_official_dir, offload="block", cache=cache)
    out = _gen(pipe, steps=4)
    assert out.stats == ref.stats
    torch.testing.assert_close(out.latents, ref.latents, rtol=0, atol=0)


def test_with_dynamic_lora(tiny_official_dir, shared, tmp_path):
    from tests.quant.test_quant_lora import _write_lora

    lora = tmp_path / "l.safetensors"
    _write_lora(lora, "official")
    cache = "firstblock:threshold=1e9"
    pipe = _load(tiny_official_dir, cache=cache, lora=[(lora, 1.0)], lora_mode="dynamic")
    with_lora = _gen(pipe, steps=4)
    pipe.set_lora([])  # switched between generations: no residual of the LoRA run is reused
    without = _gen(pipe, steps=4)
    assert torch.equal(without.latents, _gen(_with(shared, cache), steps=4).latents)
    pipe.set_lora([(lora, 1.0)])
    assert torch.equal(_gen(pipe, steps=4).latents, with_lora.latents)  # and none of the LoRA-less run either
    assert not torch.equal(with_lora.latents, without.latents)
    assert with_lora.stats["model_calls_skipped"] == 2 * (4 - 1)


def test_compiled_blocks_do_not_recompile(tiny_official_dir):
    """The runner is outside the compiled blocks: block 0 alone, the rest, skips: one graph."""
    from torch._dynamo.utils import counters

    from lightx2v.config import CompileConfig

    torch._dynamo.reset()
    counters.clear()
    pipe = _load(tiny_official_dir, cache="firstblock:threshold=0.05",
                 compile=CompileConfig(enabled=True, backend="aot_eager"))
    log = pipe.pipeline.engine_log
    assert [line.split(":")[0] for line in log].index("cache") < [line.split(":")[0] for line in log].index("compile")
    _gen(pipe, steps=3)
    _gen(pipe, seed=3, steps=3)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]


def test_cli_prints_the_forwards(tiny_official_dir, tmp_path, capsys):
    from lightx2v.cli.main import main

    args = ["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--size", "32x32", "--frames",
            "5", "--steps", "4", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(tmp_path / "v.mp4"), "--cache", "taylorseer:interval=2,warmup=1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "DiT forwards: 4 run, 4 skipped by the cache" in err  # steps 0, 2 run; 1, 3 forecast (x2 CFG)
    assert main(args[:-2] + ["--cache", "teacache"]) == 2  # the tiny model's width has no published numbers
    assert "--cache teacache needs the model's published coefficients" in capsys.readouterr().err
