"""One rank of tests/runtime/test_parallel.py's launch (started twice, with torchrun's environment).

    python tests/runtime/parallel_worker.py SPEC.json OUT_DIR

For every case, one rank (in turn) runs the request alone (the reference, parallel off) and both ranks
run it with the case's parallel options; each rank saves what it got (OUT_DIR/<case>.<rank>.pt:
latents or frames, path, stats, engine log, the tokens its blocks saw) and the reference (<case>.ref.pt). Last, the error case: under
`fail_together`, rank 1 fails at step 2 of a Ulysses run while rank 0 waits in the all-to-all; both
must exit with one message (the test reads the exit codes and stderr).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightx2v import LightX2V
from lightx2v.config import CompileConfig
from lightx2v.errors import InputError

PROMPT = "a red fox runs through the snow"
SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=3, guidance_scale=4.0, seed=7)
PADDED = dict(SMALL, height=48, width=48, num_frames=9)  # 3 x 3 x 3 = 27 tokens: one padded for 2 ranks
CACHED = dict(SMALL, num_inference_steps=8)


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))


def cases() -> list[tuple[str, str, dict, dict, dict]]:
    """(name, model, load options, parallel options, request)."""
    aot = CompileConfig(enabled=True, backend="aot_eager")
    out = [
        ("ulysses", "wan21", {}, {"ulysses": 2}, SMALL),
        ("ulysses_padded", "wan21", {}, {"ulysses": 2}, PADDED),
        ("cfg", "wan21", {}, {"cfg_parallel": True}, SMALL),
        ("ulysses_frames", "wan21", {}, {"ulysses": 2}, dict(SMALL, output_type="np")),
        ("ulysses_firstblock", "wan21", {"cache": "firstblock:threshold=0.3"}, {"ulysses": 2}, CACHED),
        ("ulysses_teacache", "wan21", {"cache": "teacache:model=t2v-1.3b,threshold=0.5,ret_steps=true"},
         {"ulysses": 2}, CACHED),
        ("cfg_taylorseer", "wan21", {"cache": "taylorseer:interval=2,warmup=1"}, {"cfg_parallel": True}, CACHED),
        ("ulysses_quant", "wan21", {"quant": "w8a8-int8"}, {"ulysses": 2}, SMALL),
        ("cfg_quant", "wan21", {"quant": "w8a8-int8"}, {"cfg_parallel": True}, SMALL),
        ("ulysses_block_offload", "wan21", {"offload": "block"}, {"ulysses": 2}, SMALL),
        ("ulysses_distill", "wan21", {"preset": "wan2.1-t2v-14b-distill"}, {"ulysses": 2},
         dict(height=32, width=32, num_frames=5, seed=7)),
        ("wan22_cfg_experts", "wan22_t2v", {}, {"cfg_parallel": True},
         dict(height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=3.0,
              seed=7)),
        ("wan22_ulysses_experts", "wan22_t2v", {}, {"ulysses": 2},
         dict(height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=3.0,
              seed=7)),
        ("wan22_ti2v_image_ulysses", "wan22_ti2v", {}, {"ulysses": 2},
         dict(image=_image(96, 64), height=64, width=96, num_frames=5, num_inference_steps=3, guidance_scale=5.0,
              seed=7)),
        # no seed: each process draws its own; the ranks must agree on rank 0's (no reference: random)
        ("cfg_random_seed", "wan21", {}, {"cfg_parallel": True}, {k: v for k, v in SMALL.items() if k != "seed"}),
        # the parallel VAE decode: a frame two pieces wide (each part at least the 8-latent-pixel overlap)
        ("ulysses_vae_parallel", "wan21", {}, {"ulysses": 2, "vae_parallel": True},
         dict(SMALL, height=64, width=128, output_type="np")),
    ]
    # 4 ranks: LightX2V's 8-GPU layout, halved (CFG pairs outermost, Ulysses inside ring), with a cache and compile
    out += [("cfg_ulysses", "wan21", {"cache": "firstblock:threshold=0.5", "compile": aot},
             {"cfg_parallel": True, "ulysses": 2}, dict(PADDED, num_inference_steps=6)),
            ("cfg_ring", "wan21", {}, {"cfg_parallel": True, "ring": 2}, PADDED),
            ("ulysses_ring", "wan21", {}, {"ulysses": 2, "ring": 2}, PADDED)]
    return out


def _load(root: str, **kw) -> LightX2V:
    return LightX2V.from_pretrained(root, device="cpu", dtype="fp32", progress=False, **kw)


def _run(pipe: LightX2V, request: dict, **kw):
    request = dict(request)
    request.setdefault("output_type", "latent")
    return pipe.generate(prompt=PROMPT, **request, **kw)


def _record(result, pipe=None) -> dict:
    out = result.frames if result.frames is not None else result.latents
    return {"out": None if out is None else torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out),
            "path": result.path, "stats": dict(result.stats), "log": list(pipe.pipeline.engine_log) if pipe else [],
            "seed": result.seed}


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out = Path(out_dir)
    t0 = time.perf_counter()
    todo = [c for c in cases() if c[0] in spec["cases"]]
    for i, (name, model, load_kw, par_kw, request) in enumerate(todo):
        root = spec[model]
        if rank == i % world and "seed" in request:  # the reference: one process, parallel off (ranks take turns)
            ref_kw = {k: v for k, v in load_kw.items() if k != "compile"}  # (aot_eager is eager's numbers)
            torch.save(_record(_run(_load(root, **ref_kw), request)), out / f"{name}.ref.pt")
        pipe = _load(root, **load_kw, **par_kw)
        tokens = []  # the tokens block 0 of the (first) DiT sees: this rank's share under sequence parallelism
        hook = pipe.pipeline.dit.blocks[0].register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1]))
        try:
            record = _record(_run(pipe, request), pipe)
        except InputError as exc:  # refused (ring with a padded token count): both ranks, before a collective
            torch.save({"error": str(exc)}, out / f"{name}.{rank}.pt")
            continue
        hook.remove()
        torch.save({**record, "tokens": sorted(set(tokens))}, out / f"{name}.{rank}.pt")
        print(f"case {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    (out / f"done.{rank}").write_text("ok")
    if spec.get("error_case"):
        fail_on_rank_1(spec, rank)


def fail_on_rank_1(spec: dict, rank: int) -> None:
    from lightx2v.runtime.parallel.launch import fail_together

    pipe = _load(spec["wan21"], ulysses=2)

    def fail(info) -> None:
        if rank == 1 and info.step == 1:
            raise RuntimeError("injected failure on rank 1")

    with fail_together():
        _run(pipe, dict(SMALL, num_inference_steps=6), callback=fail)
    print("rank finished without the failure", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
