"""A whole generation at full size through the public API, with random weights in the official layout.

Writes a Wan2.1-T2V-14B checkpoint as the Wan-AI release lays it out (config.json, the DiT in six
safetensors shards with their index, models_t5_umt5-xxl-enc-bf16.pth at umt5-xxl's full size,
Wan2.1_VAE.pth, google/umt5-xxl/ — a small tokenizer: its ids fit the full vocabulary, and
tokenizing costs microseconds either way), random weights (timing does not depend on them); then,
for each configuration, `LightX2V.from_pretrained` (load seconds) and `generate` to an mp4:
per-stage timings (result.timings), the first generation (compile) and a second one (steady state),
peak GPU memory, host peak RSS.

Configurations: the 4-step no-CFG regime of the distilled models, lossless (compile, `auto`
attention) and with our 8-bit self-attention (`self=sage8`), and a CFG run (guidance 5, batched CFG);
and diffusers' WanPipeline at the same shapes, eager and at its best (benchmarks/e2e_diffusers.py).

    python benchmarks/e2e.py --out $OUT --commit <sha>          # the checkpoint goes to /dev/shm
    python benchmarks/e2e.py --size tiny --device cpu --out /tmp/e2e   # a dry run of the same code
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from random_weights import fill_random_

RUNS = {
    "4step_lossless": dict(engine=dict(compile=True), gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_sage8": dict(engine=dict(compile=True, attention="self=sage8,cross=auto"),
                        gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_lossless_vae_bf16": dict(engine=dict(compile=True, vae_dtype="bf16"),
                                    gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    # the fastest we offer: 8-bit self-attention, the VAE in bf16 and its decoder compiled too
    "4step_fast": dict(engine=dict(compile=dict(enabled=True, vae=True), attention="self=sage8,cross=auto",
                                   vae_dtype="bf16"),
                       gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    # fp8 weights and activations (w8a8-fp8, the Triton quantizer), lossless attention; and with everything lossy
    "4step_fp8": dict(engine=dict(compile=True, quant="w8a8-fp8", kernels="triton"),
                      gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_fp8_fast": dict(engine=dict(compile=dict(enabled=True, vae=True), quant="w8a8-fp8", kernels="triton",
                                       attention="self=sage8,cross=auto", vae_dtype="bf16"),
                           gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    # lossless attention (auto: FlashAttention-3 where installed), the VAE in bf16 with its decoder compiled
    "4step_lossless_fast_vae": dict(engine=dict(compile=dict(enabled=True, vae=True), vae_dtype="bf16"),
                                    gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_lossless_fast_vae_triton": dict(engine=dict(compile=dict(enabled=True, vae=True), vae_dtype="bf16",
                                                       kernels="triton"),
                                           gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    # FA3's FP8 kernel on the self-attention (needs FA3 installed): with bf16 weights, and with fp8 ones
    "4step_fa3fp8_fast_vae": dict(engine=dict(compile=dict(enabled=True, vae=True), attention="self=fa3_fp8,cross=auto",
                                              vae_dtype="bf16"), gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_fp8_fa3fp8_fast_vae": dict(engine=dict(compile=dict(enabled=True, vae=True), quant="w8a8-fp8",
                                                  kernels="triton", attention="self=fa3_fp8,cross=auto", vae_dtype="bf16"),
                                      gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_fa3fp8_tiny_vae": dict(engine=dict(compile=True, kernels="triton", attention="self=fa3_fp8,cross=auto",
                                              tiny_vae="@taew2_1"), gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "4step_fp8_fa3fp8_tiny_vae": dict(engine=dict(compile=True, quant="w8a8-fp8", kernels="triton",
                                                  attention="self=fa3_fp8,cross=auto", tiny_vae="@taew2_1"),
                                      gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    # the fastest lossy path with the tiny VAE (taew2_1 layout, random weights written beside the folder)
    "4step_fp8_tiny_vae": dict(engine=dict(compile=True, quant="w8a8-fp8", kernels="triton",
                                           attention="self=sage8,cross=auto", tiny_vae="@taew2_1"),
                               gen=dict(num_inference_steps=4, guidance_scale=1.0)),
    "cfg_4step_batched": dict(engine=dict(compile=True, cfg_mode="batched"),
                              gen=dict(num_inference_steps=4, guidance_scale=5.0)),
}


# diffusers' WanPipeline at the same shapes, 4 steps without CFG (benchmarks/e2e_diffusers.py): name -> compiled
DIFFUSERS_RUNS = {"diffusers_4step": False, "diffusers_4step_best": True}


def built(cls, cfg, device: str, dtype: torch.dtype) -> dict:
    """A state dict of `cls(cfg)` with random weights, made on `device`, returned on the host."""
    with torch.device("meta"):
        m = cls(cfg)
    m = fill_random_(m.to_empty(device=device), device)
    return {k: v.to(dtype).cpu().contiguous() for k, v in m.state_dict().items()}


def write_tiny_vae(path: Path) -> Path:
    """A taew2_1-layout tiny VAE file (fp16, as madebyollin's release) with random weights."""
    from safetensors.torch import save_file

    from lightx2v.models.wan.taehv import TinyVAE

    if not path.exists():
        sd = fill_random_(TinyVAE(), "cpu").state_dict()
        save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))
    return path


def write_checkpoint(root: Path, size: str, device: str, task: str = "t2v", parts: tuple = ("t5", "vae", "dit")) -> dict:
    """The official Wan2.1-T2V (or -I2V: `task="i2v"`, with the CLIP file) layout at full (or tiny) size.

    `parts` names what to write (a second task in the same folder rewrites only the DiT and the
    CLIP file); returns seconds per file group."""
    from safetensors.torch import save_file

    from lightx2v.models.wan.clip import CLIPVisionConfig, WanCLIPVision
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel
    from lightx2v.models.wan.layouts import OFFICIAL_CLIP
    from lightx2v.models.wan.t5 import UMT5Config, UMT5Encoder
    from lightx2v.models.wan.tiny import tiny_dit_config, tiny_t5_config
    from lightx2v.models.wan.tokenizer import WanTokenizer, build_tiny_tokenizer
    from lightx2v.models.wan.vae import WanVAE, WanVAEConfig, tiny_vae_config

    took = {}
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = build_tiny_tokenizer(root / "google" / "umt5-xxl")
    if size == "tiny":
        t5_cfg = tiny_t5_config(WanTokenizer.from_folder(tok).vocab_size)
        dit_cfg, vae_cfg = tiny_dit_config(text_dim=t5_cfg.dim), tiny_vae_config()
    else:
        t5_cfg, vae_cfg = UMT5Config(), WanVAEConfig()
        dit_cfg = WanDiTConfig(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=5120,
                               ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16, num_heads=40, num_layers=40)
    if task == "i2v":  # the image branch: 36 input channels (noise, mask, image latents) and CLIP ViT-H/14 tokens
        dit_cfg = dataclasses.replace(dit_cfg, model_type="i2v", in_dim=36)
        clip_cfg = CLIPVisionConfig() if size != "tiny" else CLIPVisionConfig(ffn_dim=128, num_layers=2)
        visual = built(WanCLIPVision, clip_cfg, device, torch.float16)  # the release's CLIP file is fp16
        torch.save({f"visual.{k}": v for k, v in visual.items()}, root / OFFICIAL_CLIP)
        took["clip"] = time.perf_counter() - t0
    else:
        (root / OFFICIAL_CLIP).unlink(missing_ok=True)
    t0 = time.perf_counter()
    if "t5" in parts:
        torch.save(built(UMT5Encoder, t5_cfg, device, torch.bfloat16), root / "models_t5_umt5-xxl-enc-bf16.pth")
    took["t5"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "vae" in parts:
        torch.save(built(WanVAE, vae_cfg, device, torch.float32), root / "Wan2.1_VAE.pth")
    took["vae"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for old in root.glob("diffusion_pytorch_model*"):
        old.unlink()
    sd = built(WanModel, dit_cfg, device, torch.bfloat16)
    keys = list(sd)
    n = 6 if size != "tiny" else 2
    shard = -(-len(keys) // n)
    weight_map = {}
    for i in range(n):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * shard:(i + 1) * shard]}
        save_file(part, str(root / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(dit_cfg.to_official(), indent=2))
    took["dit"] = time.perf_counter() - t0
    return took


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(name: str, spec: dict, ckpt: Path, args) -> dict:
    from lightx2v import LightX2V

    row: dict = {"run": name, **{f"engine.{k}": v for k, v in spec["engine"].items()}}
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine = dict(spec["engine"])
    if isinstance(engine.get("compile"), dict):
        from lightx2v.config import CompileConfig

        engine["compile"] = CompileConfig(**engine["compile"])
    if args.device == "cpu":
        engine.pop("compile", None)
        if any(lossy in str(engine.get("attention", "")) for lossy in ("sage8", "fa3_fp8")):  # GPU-only kernels
            engine["attention"] = "reference"
    if engine.get("tiny_vae") == "@taew2_1":
        engine["tiny_vae"] = str(write_tiny_vae(ckpt.parent / "lx2v_e2e_taew2_1.safetensors"))
    pipe = LightX2V.from_pretrained(ckpt, device=args.device, progress=False, **engine)
    row["load_s"] = time.perf_counter() - t0
    row["engine_log"] = pipe.pipeline.engine_log
    h, w, f = (480, 832, 81) if args.size != "tiny" else (64, 64, 9)
    gen = dict(prompt="a red panda drinking tea in a bamboo forest, cinematic", height=h, width=w, num_frames=f,
               seed=0, **spec["gen"])
    for attempt in ("first", "second"):
        out = Path(args.tmp) / f"{name}_{attempt}.mp4"
        t1 = time.perf_counter()
        result = pipe.generate(output_path=str(out), **gen)
        row[f"{attempt}_wall_s"] = time.perf_counter() - t1
        row[f"{attempt}_timings"] = {k: round(v, 3) for k, v in result.timings.items()}
        row[f"{attempt}_mp4_bytes"] = out.stat().st_size
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    row["host_peak_rss_gib"] = rss_gib()
    del pipe, result
    torch._dynamo.reset()  # compiled code holds the blocks
    gc.collect()  # and the pipeline sits in reference cycles: freed now, not during the next run
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="14B", choices=("14B", "tiny"))
    ap.add_argument("--runs", default=",".join([*RUNS, *DIFFUSERS_RUNS]))
    ap.add_argument("--ckpt", default="/dev/shm/lx2v_e2e", help="where the checkpoint is written (RAM by default)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt)
    res: dict = {"meta": {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                          "torch": torch.__version__, "commit": args.commit, "date": time.strftime("%Y-%m-%d"),
                          "size": args.size, "checkpoint_dir": str(ckpt)}, "runs": []}
    try:
        res["meta"]["write_s"] = write_checkpoint(ckpt, args.size, args.device)
        print("checkpoint written", res["meta"]["write_s"], flush=True)
        for name in [r for r in args.runs.split(",") if r]:
            try:
                if name in DIFFUSERS_RUNS:
                    import e2e_diffusers

                    row = e2e_diffusers.run(name, ckpt, args, compiled=DIFFUSERS_RUNS[name])
                else:
                    row = run(name, RUNS[name], ckpt, args)
            except Exception as exc:  # a failing run must not stop the others
                row = {"run": name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
            (out / "e2e.json").write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    (out / "e2e.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
