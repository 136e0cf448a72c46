"""Every engine transform on both Wan2.2 experts (tiny T2V-A14B, official layout, CPU, fp32).

The runs take 2 steps at shift 1 (timesteps 999, 499 against the boundary 875): one step of each
expert, so every result below goes through both. The oracle of each combination is the same run
done step by step: a float pipeline to which the transforms are applied by hand, in the engine's
order, to each expert.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lightx2v import LightX2V
from lightx2v.config import CompileConfig, LoraConfig
from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.lora import load_lora, merge_loras_
from lightx2v.loading.lora_plan import resolve_loras
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.runtime.engine import ORDER, quant_on_load
from lightx2v.runtime.lora import apply_dynamic_lora

H, W, FRAMES = 32, 48, 5
EXPERTS = ("dit", "dit_2")
# official module -> weight shape [out, in] of the tiny DiT (dim 64, ffn 128)
TARGETS = {"blocks.0.self_attn.q": (64, 64), "blocks.1.cross_attn.v": (64, 64), "blocks.0.ffn.0": (128, 64),
           "blocks.1.ffn.2": (64, 128)}


def write_lora(path, seed: int, targets=TARGETS) -> str:
    """An official-keys LoRA (diffusion_model. + lora_down / lora_up + alpha, as LightX2V's)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (out_f, in_f) in targets.items():
        key = f"diffusion_model.{name}"
        sd[f"{key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) / in_f**0.5
        sd[f"{key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.5
        sd[f"{key}.alpha"] = torch.tensor(2.0 + seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(wan22_t2v_dirs):
    return wan22_t2v_dirs[1]


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    d = tmp_path_factory.mktemp("w22-loras")
    return write_lora(d / "a.safetensors", 1), write_lora(d / "b.safetensors", 2)


def load(model, **kw) -> LightX2V:
    return LightX2V.from_pretrained(model, device="cpu", dtype=torch.float32, progress=False, **kw)


def run(pipe: LightX2V, guidance: float = 3.0):
    """(latents, frames) of one 2-step run: a high-noise step, then a low-noise one."""
    shape = pipe.pipeline.geometry.latent_shape(FRAMES, H, W)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    r = pipe.generate(prompt="a red fox in the snow", height=H, width=W, num_frames=FRAMES, num_inference_steps=2,
                      shift=1.0, guidance_scale=guidance, latents=latents, output_type="np")
    return r.latents, r.frames


def assert_same_run(a, b, atol: float = 0.0) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=atol)
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=max(atol, 1e-6))


def experts(pipe: LightX2V) -> dict:
    return {n: pipe.pipeline.components[n] for n in EXPERTS}


def weights(pipe: LightX2V) -> dict:
    return {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in experts(pipe).items()}


def log_of(pipe: LightX2V, step: str) -> list[str]:
    return [line for line in pipe.pipeline.engine_log if line.startswith(step + ":")]


def test_both_experts_run(model):
    pipe = load(model)
    calls = {n: 0 for n in EXPERTS}
    for n, m in experts(pipe).items():
        m.register_forward_pre_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    run(pipe)
    assert calls == {"dit": 2, "dit_2": 2}  # one step each, two CFG branches


# ---------------------------------------------------------------- quantization


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a8-fp8"])
def test_quant_on_both_experts(model, scheme):
    pipe = load(model, quant=scheme)
    by_hand = load(model)
    for name, m in experts(by_hand).items():
        declared = {n for n, x in m.named_modules() if isinstance(x, torch.nn.Linear) and re.fullmatch(m._quant_linears, n)}
        quantized = {n: x for n, x in experts(pipe)[name].named_modules() if isinstance(x, QuantLinear)}
        assert set(quantized) == declared and len(declared) == 2 * 10, name  # q k v o twice, ffn.0, ffn.2; per block
        assert all(x.scheme.name == scheme for x in quantized.values()), name
        apply_quant(m, scheme, compute_dtype=torch.float32)
    assert log_of(pipe, "quant") == [f"quant: {n}: 20 layers ({scheme}, at load)" for n in EXPERTS]
    assert_same_run(run(pipe), run(by_hand))


# ---------------------------------------------------------------- LoRA, merged


def expected_merge(base: dict, lora: str, strength: float, model) -> dict:
    """base + strength * delta of `lora` on its targets (float32, as merge_loras_ sums)."""
    lw = load_lora(lora, model)
    out = dict(base)
    for name in lw.targets:
        out[name] = base[name].float().add(lw.delta(name), alpha=strength)
    return out


def assert_weights(pipe, want: dict) -> None:
    for n, m in experts(pipe).items():
        got = m.state_dict()
        for k, v in want[n].items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"{n}.{k}")


def test_lora_merged_into_both_experts_or_the_named_one(model, loras):
    a, b = loras
    base_pipe = load(model)
    base = weights(base_pipe)
    dit = experts(base_pipe)["dit"]

    both = load(model, lora=[(a, 0.7)])
    assert_weights(both, {n: expected_merge(base[n], a, 0.7, dit) for n in EXPERTS})
    assert log_of(both, "lora_merge") == ["lora_merge: dit: 1 LoRA(s)", "lora_merge: dit_2: 1 LoRA(s)"]

    per = load(model, lora_high=[(a, 0.7)], lora_low=[(b, -0.5)])
    assert_weights(per, {"dit": expected_merge(base["dit"], a, 0.7, dit),
                         "dit_2": expected_merge(base["dit_2"], b, -0.5, dit)})
    low_only = load(model, lora_low=[(b, 0.5)])
    assert_weights(low_only, {"dit": base["dit"], "dit_2": expected_merge(base["dit_2"], b, 0.5, dit)})
    assert log_of(low_only, "lora_merge") == ["lora_merge: dit_2: 1 LoRA(s)"]
    # the typed form: LoraConfig.per_dit by DiT name, as make_engine builds it
    from lightx2v.api import make_engine

    engine = make_engine(device="cpu", dtype=torch.float32, lora_per_dit={"dit_2": [(b, 0.5)]})
    typed = LightX2V.from_model_config(low_only.model_config, engine, progress=False)
    assert_weights(typed, weights(low_only))

    meta = per.pipeline.output_metadata(_params(), 1, (H, W))["loras"]
    assert meta == [{"path": a, "strength": 0.7, "mode": "merged", "dits": ["dit"], "experts": ["high"]},
                    {"path": b, "strength": -0.5, "mode": "merged", "dits": ["dit_2"], "experts": ["low"]}]
    meta = both.pipeline.lora_metadata()
    assert meta == [{"path": a, "strength": 0.7, "mode": "merged", "dits": ["dit", "dit_2"], "experts": ["high", "low"]}]
    json.dumps(meta)


def _params():
    from lightx2v.config import SamplingParams

    return SamplingParams(prompt="p", num_inference_steps=2, guidance_scale=3.0, shift=1.0, solver="unipc", fps=16)


# ---------------------------------------------------------------- LoRA, dynamic


def test_dynamic_lora_on_both_experts_switches_per_expert(model, loras):
    a, b = loras
    pipe = load(model, lora=[(a, 0.7)], lora_mode="dynamic")
    sets = pipe.pipeline.lora_sets
    assert set(sets) == set(EXPERTS) and pipe.pipeline.lora_set is sets
    assert {n: [(lw.source, s) for lw, s in act] for n, act in sets.active.items()} == {
        "dit": [(a, 0.7)], "dit_2": [(a, 0.7)]}
    for n, m in experts(pipe).items():  # a hook on every targeted layer of both experts
        assert all(len(m.get_submodule(t)._forward_hooks) == 1 for t in TARGETS), n
    assert log_of(pipe, "lora_dynamic") == ["lora_dynamic: dit: 1 LoRA(s)", "lora_dynamic: dit_2: 1 LoRA(s)"]
    assert_same_run(run(pipe), run(load(model, lora=[(a, 0.7)])), atol=1e-5)

    # per expert, without reloading: the high expert a, the low one b
    pipe.set_lora(lora_high=[(a, 0.7)], lora_low=[(b, -0.5)])
    assert {n: [lw.source for lw, _ in act] for n, act in sets.active.items()} == {"dit": [a], "dit_2": [b]}
    merged = load(model, lora_high=[(a, 0.7)], lora_low=[(b, -0.5)])
    assert_same_run(run(pipe), run(merged), atol=1e-5)
    assert pipe.pipeline.lora_metadata() == [
        {"path": a, "strength": 0.7, "mode": "dynamic", "dits": ["dit"], "experts": ["high"]},
        {"path": b, "strength": -0.5, "mode": "dynamic", "dits": ["dit_2"], "experts": ["low"]}]
    pipe.set_lora(lora_low=[(b, -0.5)])  # the high expert back to its base
    assert set(sets.active) == {"dit_2"}
    assert_same_run(run(pipe), run(load(model, lora_low=[(b, -0.5)])), atol=1e-5)
    pipe.set_lora()
    assert sets.active == {} and pipe.pipeline.lora_metadata() == []
    assert_same_run(run(pipe), run(load(model)))  # the exact base output


# ---------------------------------------------------------------- combinations


def test_quant_and_lora_merge_equal_step_by_step(model, loras):
    """Merged per expert, then int8: as merging into each float expert by hand and quantizing."""
    a, b = loras
    pipe = load(model, quant="w8a8-int8", lora_high=[(a, 0.7)], lora_low=[(b, 0.5)])
    steps = [line.split(":")[0] for line in pipe.pipeline.engine_log]
    assert steps == sorted(steps, key=ORDER.index)
    by_hand = load(model)
    for (name, m), (path, s) in zip(experts(by_hand).items(), ((a, 0.7), (b, 0.5))):
        merge_loras_(m, [(load_lora(path, m), s)])
        apply_quant(m, "w8a8-int8", compute_dtype=torch.float32)
    for (n, x), (_, y) in zip(experts(pipe).items(), experts(by_hand).items()):
        for (k, u), (k2, v) in zip(x.state_dict().items(), y.state_dict().items()):
            assert k == k2 and torch.equal(u, v), f"{n}.{k}"
    assert_same_run(run(pipe), run(by_hand))


def test_quant_at_load_for_the_expert_no_merge_needs(model, loras):
    """A LoRA merged into the low-noise expert only: the high one is quantized while read, the low
    one after the merge; the same bytes as doing both after."""
    _, b = loras
    engine_lora = LoraConfig(per_dit={"low": ((b, 0.5),)})
    from lightx2v.config import EngineConfig

    engine = EngineConfig(device="cpu", quant="w8a8-int8", lora=engine_lora)
    assert quant_on_load(engine) is None
    assert quant_on_load(engine, "dit", {"high": "dit", "low": "dit_2"}) == "w8a8-int8"
    assert quant_on_load(engine, "dit_2", {"high": "dit", "low": "dit_2"}) is None
    pipe = load(model, quant="w8a8-int8", lora_low=[(b, 0.5)])
    assert log_of(pipe, "quant") == ["quant: dit: 20 layers (w8a8-int8, at load)", "quant: dit_2: 20 layers (w8a8-int8)"]
    by_hand = load(model)
    merge_loras_(experts(by_hand)["dit_2"], [(load_lora(b, experts(by_hand)["dit_2"]), 0.5)])
    for m in experts(by_hand).values():
        apply_quant(m, "w8a8-int8", compute_dtype=torch.float32)
    assert_same_run(run(pipe), run(by_hand))


def test_quant_and_dynamic_lora_equal_step_by_step(model, loras):
    a, b = loras
    pipe = load(model, quant="w8a8-fp8", lora=[(a, 0.7)], lora_mode="dynamic")
    by_hand = load(model)
    hand_sets = {}
    for n, m in experts(by_hand).items():
        apply_quant(m, "w8a8-fp8", compute_dtype=torch.float32)
        hand_sets[n] = apply_dynamic_lora(m, [(load_lora(a, m), 0.7)])
    assert_same_run(run(pipe), run(by_hand))
    pipe.set_lora(lora_high=[(b, 0.3)])
    hand_sets["dit"].set([(load_lora(b, experts(by_hand)["dit"]), 0.3)])
    hand_sets["dit_2"].reset()
    assert_same_run(run(pipe), run(by_hand))


def test_lora_and_compile_on_both_experts(model, loras):
    """Regional torch.compile (inductor) of both experts' blocks, with a LoRA merged into each:
    the frames of eager by-hand merging (one compile: no CFG, one step per expert)."""
    pytest.importorskip("torch._inductor")
    a, b = loras
    pipe = load(model, lora_high=[(a, 0.7)], lora_low=[(b, 0.5)], compile=True)
    assert log_of(pipe, "compile") == ["compile: dit, 2 blocks (inductor)", "compile: dit_2, 2 blocks (inductor)"]
    assert all(blk._compiled_call_impl is not None for m in experts(pipe).values() for blk in m.blocks)
    by_hand = load(model)
    for m, (path, s) in zip(experts(by_hand).values(), ((a, 0.7), (b, 0.5))):
        merge_loras_(m, [(load_lora(path, m), s)])
    assert_same_run(run(pipe, guidance=1.0), run(by_hand, guidance=1.0), atol=1e-4)


def test_dynamic_lora_switch_under_compile(model, loras):
    """set_lora per expert after compile (hooks added and removed inside compiled blocks) gives the
    eager result (aot_eager: the tracing, without inductor's compile time)."""
    a, b = loras
    pipe = load(model, lora=[(a, 0.7)], lora_mode="dynamic", compile=CompileConfig(enabled=True, backend="aot_eager"))
    eager = load(model, lora=[(a, 0.7)], lora_mode="dynamic")
    assert_same_run(run(pipe, guidance=1.0), run(eager, guidance=1.0), atol=1e-5)
    for p in (pipe, eager):
        p.set_lora(lora_low=[(b, 0.5)])
    assert_same_run(run(pipe, guidance=1.0), run(eager, guidance=1.0), atol=1e-5)


# ---------------------------------------------------------------- routing and refusals


def test_lightning_folder_and_expert_named_files_go_to_their_expert(model, loras, tmp_path):
    a, b = loras
    folder = tmp_path / "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1"
    write_lora(folder / "high_noise_model.safetensors", 1)
    write_lora(folder / "low_noise_model.safetensors", 2)
    with pytest.warns(UserWarning, match="Wan2.2-Lightning folder, high_noise_model.safetensors for the high-noise"):
        pipe = load(model, lora=[(folder, 0.8)])
    assert [(m["path"].rsplit("/", 1)[1], m["experts"]) for m in pipe.pipeline.lora_metadata()] == [
        ("high_noise_model.safetensors", ["high"]), ("low_noise_model.safetensors", ["low"])]
    explicit = load(model, lora_high=[(a, 0.8)], lora_low=[(b, 0.8)])  # the same tensors, given explicitly
    assert_weights(pipe, weights(explicit))

    named = tmp_path / "style_low_noise_lora_rank16.safetensors"
    write_lora(named, 2)
    with pytest.warns(UserWarning, match="its name says the low-noise expert, so it goes to that expert only"):
        pipe = load(model, lora=[(named, 0.8)])
    assert pipe.pipeline.lora_metadata()[0]["experts"] == ["low"]
    assert_weights(pipe, {"dit": weights(load(model))["dit"], "dit_2": weights(explicit)["dit_2"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explicit: no hint, no warning
        load(model, lora_high=[(named, 0.8)])


def test_routing_rules_read_no_weights(model, wan22_ti2v_dirs, tiny_official_dir, tmp_path):
    from lightx2v.loading.detect import detect

    mc = detect(model)
    f = tmp_path / "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors"
    f.write_bytes(b"")
    plain = tmp_path / "style.safetensors"
    plain.write_bytes(b"")
    with pytest.warns(UserWarning, match="low-noise expert"):
        cfg = resolve_loras(mc, LoraConfig(((str(f), 1.0), (str(plain), 0.5))))
    assert cfg.loras == ((str(plain), 0.5),) and dict(cfg.per_dit) == {"low": ((str(f), 1.0),)}

    half = tmp_path / "half"
    half.mkdir()
    (half / "high_noise_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="holds high_noise_model.safetensors but not low_noise_model.safetensors"):
        resolve_loras(mc, LoraConfig(((str(half), 1.0),)))
    with pytest.raises(InputError, match="lora_high takes a LoRA file; .* is a folder"):
        resolve_loras(mc, LoraConfig(per_dit={"high": ((str(half), 1.0),)}))
    with pytest.raises(InputError, match=r"lora_mid names no expert of this Wan2.2 t2v model: its experts are "
                                         r"high \(dit\), low \(dit_2\)"):
        resolve_loras(mc, LoraConfig(per_dit={"mid": ((str(plain), 1.0),)}))
    with pytest.raises(InputError, match="LoRA file not found"):
        resolve_loras(mc, LoraConfig(per_dit={"low": ((str(tmp_path / "nope.safetensors"), 1.0),)}))

    ti2v = detect(wan22_ti2v_dirs[1])
    with pytest.raises(InputError, match="lora_low names an expert, but this Wan2.2 ti2v model has one DiT") as e:
        resolve_loras(ti2v, LoraConfig(per_dit={"low": ((str(plain), 1.0),)}))
    assert e.value.field == "lora_low"
    (half / "low_noise_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="is a folder: a folder of one LoRA per expert .* has one DiT"):
        resolve_loras(ti2v, LoraConfig(((str(half), 1.0),)))
    assert resolve_loras(ti2v, LoraConfig(((str(f), 1.0),))).loras == ((str(f), 1.0),)  # no expert: as given
    wan21 = detect(tiny_official_dir)  # a family that routes nothing: a folder is no LoRA
    with pytest.raises(InputError, match="is a folder: give a LoRA file"):
        resolve_loras(wan21, LoraConfig(((str(half), 1.0),)))
    with pytest.raises(InputError, match="lora_high names an expert, but this Wan2.1 t2v model has one DiT"):
        resolve_loras(wan21, LoraConfig(per_dit={"high": ((str(plain), 1.0),)}))
    with pytest.raises(InputError, match="LoRAs are given as \\(path, strength\\) pairs"):
        LightX2V.from_pretrained(model, device="cpu", lora=(str(plain), 1.0))


def test_cli_lora_high_on_a_one_dit_model_is_one_line(wan22_ti2v_dirs, tmp_path, capsys, monkeypatch):
    from lightx2v.cli.main import main

    def refuse(*a, **k):
        raise AssertionError("weights were read before the LoRA flags were checked")

    monkeypatch.setattr(LightX2V, "from_model_config", classmethod(refuse))
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    code = main(["generate", "--model-path", str(wan22_ti2v_dirs[1]), "--prompt", "a fox", "--size", "96x64",
                 "--frames", "5", "--device", "cpu", "--quiet", "--lora-high", f"{lora}:0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err == ("lightx2v: error: --lora-high names an expert, but this Wan2.2 ti2v model has one DiT "
                   "(no 'high' expert); give the LoRA without an expert")


def test_a_lora_matching_nothing_on_its_expert(model, loras, tmp_path):
    stray = write_lora(tmp_path / "stray.safetensors", 3, targets={"blocks.7.self_attn.q": (64, 64)})
    with pytest.raises(CheckpointError, match=r"no tensor of LoRA stray.safetensors targets the low-noise expert \(dit_2\)"):
        load(model, lora_low=[(stray, 1.0)])
    with pytest.warns(UserWarning, match=r"target nothing in the low-noise expert \(dit_2\)"):
        pipe = load(model, lora_low=[(stray, 1.0)], lora_allow_unmatched=True)
    assert_weights(pipe, weights(load(model)))


def test_cli_lora_per_expert_end_to_end(model, loras, tmp_path, capsys):
    """--lora-high on the command line, lora_low from --config: both merged into their expert, the
    file's metadata says which, the summary line counts them."""
    from lightx2v.cli.main import main
    from lightx2v.io.video import read_metadata

    a, b = loras
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"lora_low": [f"{b}:0.5"]}))
    out = tmp_path / "fox.mp4"
    code = main(["generate", "--model-path", str(model), "--prompt", "a red fox", "--size", f"{W}x{H}", "--frames",
                 str(FRAMES), "--steps", "2", "--shift", "1", "--device", "cpu", "--dtype", "fp32", "--seed", "1",
                 "--output", str(out), "--lora-high", f"{a}:0.7", "--config", str(config)])
    assert code == 0
    assert "2 LoRA(s) merge (1 high, 1 low)" in capsys.readouterr().err
    assert read_metadata(out)["loras"] == [
        {"path": a, "strength": 0.7, "mode": "merged", "dits": ["dit"], "experts": ["high"]},
        {"path": b, "strength": 0.5, "mode": "merged", "dits": ["dit_2"], "experts": ["low"]}]
