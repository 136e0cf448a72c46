"""The LoRA-through-the-engine checks every family's LoRA tests run (from_pretrained(lora=...)):
merged / dynamic with block offload agree, set_lora([]) undoes the LoRA, and LoRA + w8a8-int8 equals
merging and quantizing by hand. A family's test passes its own `load(folder, **kw)` and `gen(pipe)`
(a tiny latent generation)."""

from __future__ import annotations

import torch

from lightx2v.loading.lora import load_lora, merge_loras_
from lightx2v.runtime.lora import apply_dynamic_lora


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def check_merged_dynamic_offload(load, gen, folder, folder_lora, merged) -> None:
    """Merged with block offload gives the merged latents (the same weights, placed otherwise); dynamic
    (hooks) with block offload gives them too; set_lora([]) then the plain latents, which the LoRA moved."""
    pipe, want = merged
    lora = [(str(folder_lora), 0.8)]
    assert any(line.startswith("lora_merge: dit: 1 LoRA") for line in pipe.pipeline.engine_log)
    assert rel(gen(load(folder, lora=lora, offload="block")), want) < 1e-5
    dyn = load(folder, lora=lora, lora_mode="dynamic", offload="block")
    assert rel(gen(dyn), want) < 1e-5
    dyn.set_lora([])
    plain = gen(dyn)
    assert rel(plain, want) > 0.05
    assert rel(plain, gen(load(folder, offload="block"))) < 1e-6


def check_quant_lora_by_hand(load, gen, folder, folder_lora) -> None:
    """lora + w8a8-int8: merged, then quantized, as merging into the plain DiT by hand and quantizing it (the
    same bytes, the same latents); dynamic: hooks on the quantized layers, as quantizing and hooking by hand."""
    from lightx2v.quant import apply_quant

    lora = [(str(folder_lora), 0.8)]
    for mode in ("merge", "dynamic"):
        pipe = load(folder, lora=lora, lora_mode=mode, quant="w8a8-int8")
        steps = [line.split(":")[0] for line in pipe.pipeline.engine_log]
        assert steps.index("quant") == (steps.index("lora_merge") + 1 if mode == "merge" else 0)
        by_hand = load(folder)
        dit = by_hand.pipeline.dit
        if mode == "merge":
            merge_loras_(dit, [(load_lora(folder_lora, dit), 0.8)])
        apply_quant(dit, "w8a8-int8", compute_dtype=torch.float32)
        if mode == "dynamic":
            apply_dynamic_lora(dit, [(load_lora(folder_lora, dit), 0.8)])
        for (k, u), (k2, v) in zip(pipe.pipeline.dit.state_dict().items(), dit.state_dict().items()):
            assert k == k2 and torch.equal(u, v), k
        assert torch.equal(gen(pipe), gen(by_hand)), mode
