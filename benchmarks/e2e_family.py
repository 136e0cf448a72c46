"""A whole generation at full size, HunyuanVideo-1.5 480P T2V and Qwen-Image, ours beside diffusers.

The folder: benchmarks/family_folders.py writes the family's diffusers layout at full size with random
weights drawn on the GPU (bf16 safetensors shards, to /dev/shm: RAM, so load times are from RAM; the
tokenizers are tiny: see there), in a process of its own. Then each configuration runs in a fresh
process (clean peaks, as benchmarks/small_gpu.py does): load (ours: `LightX2V.from_pretrained`;
diffusers: `<Pipeline>.from_pretrained(torch_dtype=bf16, device_map=device)`), generations written
to a file (ours: mp4 / png through `output_path`; diffusers: `export_to_video` or, where diffusers has
no writer, our writer after its decoded frames; `image.save` for Qwen-Image). Ours runs a first and a
second generation (`--gens`; one in a CFG configuration, `--cfg-gens`: its denoise stage shows the CFG
cost), diffusers one by default (`--diffusers-gens`: its eager pipeline has nothing to compile, and one
HunyuanVideo-1.5 call of it is about a minute of device time).
Per row: load s, per-stage timings (ours: `result.timings`; diffusers: the pipeline call and the
export), each generation's wall seconds, peak GPU GiB (max_memory_allocated), host peak RSS (VmHWM:
the folder's /dev/shm pages count when mapped).

  hunyuan15: 121 frames at 480 x 848 (the 480P bucket), 4 steps. Ours: the 4-step distill preset
    (`hunyuanvideo-1.5-t2v-480p-distill`: no CFG), the same with compile, and 4 steps with CFG
    (guidance 6, the base schedule); diffusers' HunyuanVideo15Pipeline 4 steps without CFG (its guider
    at 1) and with (6), VAE tiling on (its documented setting for this model).
  qwen-image: 1328 x 1328, 4 steps without CFG (the Lightning regime) and with true CFG 4 (a negative
    prompt given, as diffusers needs it to run CFG), ours (also compiled) and diffusers' QwenImagePipeline.
  `--configs default` runs what fits ~8 min of device time for both families (DEFAULT_CONFIGS), `all`
  every row of CONFIGS; rows are written to $OUT/e2e_family.json as they come (a timeout keeps them).

    python benchmarks/e2e_family.py --family hunyuan15 --out $OUT --commit <sha>
    python benchmarks/e2e_family.py --family qwen-image,hunyuan15 --tiny --device cpu --out /tmp/ef   # the logic
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PROMPT = 'a red panda drinking tea in a bamboo forest, a sign reads "TEA", cinematic'
NEG = "blurry, low quality"
HY_PRESET = "hunyuanvideo-1.5-t2v-480p-distill"

# family -> config -> (implementation, engine options, generation options); run in this order
CONFIGS = {
    "hunyuan15": {
        "ours_4step": ("ours", {"preset": HY_PRESET}, {"guidance_scale": 1.0}),
        "diffusers_4step": ("diffusers", {}, {"guidance_scale": 1.0}),
        "ours_cfg6_4step": ("ours", {}, {"guidance_scale": 6.0, "negative_prompt": NEG}),
        "diffusers_cfg6_4step": ("diffusers", {}, {"guidance_scale": 6.0, "negative_prompt": NEG}),
        "ours_4step_compile": ("ours", {"preset": HY_PRESET, "compile": True}, {"guidance_scale": 1.0}),
    },
    "qwen-image": {
        "ours_4step": ("ours", {}, {"guidance_scale": 1.0}),
        "diffusers_4step": ("diffusers", {}, {"guidance_scale": 1.0}),
        "ours_cfg4_4step": ("ours", {}, {"guidance_scale": 4.0, "negative_prompt": NEG}),
        "diffusers_cfg4_4step": ("diffusers", {}, {"guidance_scale": 4.0, "negative_prompt": NEG}),
        "ours_4step_compile": ("ours", {"compile": True}, {"guidance_scale": 1.0}),
    },
}
# what one run of both families fits in (~8 min of device time: the HunyuanVideo-1.5 decode and
# diffusers' masked attention are the long parts); --configs all runs every row
DEFAULT_CONFIGS = {"hunyuan15": "ours_4step,diffusers_4step,ours_cfg6_4step",
                   "qwen-image": "ours_4step,diffusers_4step,ours_cfg4_4step,ours_4step_compile"}


def shape(family: str, tiny: bool) -> dict:
    if family == "hunyuan15":
        return dict(height=64, width=64, num_frames=5) if tiny else dict(height=480, width=848, num_frames=121)
    return dict(height=64, width=64) if tiny else dict(height=1328, width=1328)


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def ours(args, engine: dict, gen: dict, row: dict) -> None:
    import torch

    from lightx2v import LightX2V

    engine = dict(engine)
    if args.tiny:  # the preset names the 8.3B model (refused for a tiny one): its 4 steps and guidance 1 by hand
        engine.pop("preset", None)
    if args.device == "cpu":
        engine.pop("compile", None)
        engine["dtype"] = torch.float32
    t0 = time.perf_counter()
    pipe = LightX2V.from_pretrained(args.folder, device=args.device, progress=False, **engine)
    row["load_s"] = time.perf_counter() - t0
    row["engine_log"] = pipe.pipeline.engine_log
    ext = "mp4" if args.family == "hunyuan15" else "png"
    # a CFG row shows the CFG cost in its denoise stage; the no-CFG row before it shows the warm-up
    for attempt in range(args.cfg_gens if gen["guidance_scale"] > 1 else args.gens):
        out = Path(args.tmp) / f"{args.family}_{args.config}_{attempt}.{ext}"
        t1 = time.perf_counter()
        result = pipe.generate(PROMPT, num_inference_steps=4, seed=0, output_path=str(out), **shape(args.family, args.tiny),
                               **gen)
        row[f"gen{attempt + 1}_s"] = time.perf_counter() - t1
        row[f"gen{attempt + 1}_timings"] = {k: round(v, 3) for k, v in result.timings.items()}
        row[f"gen{attempt + 1}_model_calls"] = result.stats.get("model_calls")
        row["output_bytes"] = out.stat().st_size


def diffusers_pipe(args):
    import diffusers
    import torch

    cls = "HunyuanVideo15Pipeline" if args.family == "hunyuan15" else "QwenImagePipeline"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    pipe = getattr(diffusers, cls).from_pretrained(args.folder, torch_dtype=dtype, device_map=args.device)
    if args.family == "hunyuan15":
        from lightx2v.models.hunyuan15.text import crop_start_of

        # diffusers hard-codes the released tokenizer's template length (108); the folder's tokenizer is tiny
        pipe.prompt_template_encode_start_idx = crop_start_of(pipe.tokenizer)
        pipe.vae.enable_tiling()
    return pipe


def diffusers_call(args, pipe, gen: dict, out: Path) -> tuple[float, float, str]:
    """One generation to a file: (pipeline s, export s, how it was written)."""
    import torch

    g = torch.Generator(args.device).manual_seed(0)
    kw = dict(prompt=PROMPT, negative_prompt=gen.get("negative_prompt"), num_inference_steps=4, generator=g,
              **shape(args.family, args.tiny))
    t0 = time.perf_counter()
    if args.family == "hunyuan15":
        pipe.guider = pipe.guider.new(guidance_scale=gen["guidance_scale"])  # 1: one branch a step
        frames = pipe(output_type="np", **kw).frames[0]
    else:
        image = pipe(true_cfg_scale=gen["guidance_scale"], output_type="pil", **kw).images[0]
    _sync(args.device)
    t1 = time.perf_counter()
    if args.family != "hunyuan15":
        image.save(out)
        return t1 - t0, time.perf_counter() - t1, "PIL image.save"
    how = "diffusers export_to_video"
    try:
        from diffusers.utils import export_to_video

        export_to_video(list(frames), str(out), fps=24)
    except (ImportError, AttributeError):  # no writer here (or diffusers 0.42's imageio backend check failing)
        from lightx2v.io.output import save
        from lightx2v.io.video import to_uint8

        save(to_uint8(frames), out, fps=24)
        how = "lightx2v.io.output.save (diffusers has no writer here)"
    return t1 - t0, time.perf_counter() - t1, how


def diffusers_run(args, engine: dict, gen: dict, row: dict) -> None:
    t0 = time.perf_counter()
    pipe = diffusers_pipe(args)
    row["load_s"] = time.perf_counter() - t0
    ext = "mp4" if args.family == "hunyuan15" else "png"
    for attempt in range(args.diffusers_gens):
        out = Path(args.tmp) / f"{args.family}_{args.config}_{attempt}.{ext}"
        t1 = time.perf_counter()
        call_s, export_s, how = diffusers_call(args, pipe, gen, out)
        row[f"gen{attempt + 1}_s"] = time.perf_counter() - t1
        row[f"gen{attempt + 1}_timings"] = {"pipeline_call": round(call_s, 3), "export": round(export_s, 3)}
        row["export"] = how
        row["output_bytes"] = out.stat().st_size


def child(args) -> dict:
    """One configuration in this (fresh) process."""
    import torch

    impl, engine, gen = CONFIGS[args.family][args.config]
    row: dict = {"family": args.family, "config": args.config, "impl": impl, "engine": engine,
                 "gen": {**gen, "num_inference_steps": 4, **shape(args.family, args.tiny)}}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.no_grad():
            (ours if impl == "ours" else diffusers_run)(args, engine, gen, row)
    except Exception as exc:  # a failing configuration is a result: recorded, the others go on
        import traceback

        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        row["traceback"] = traceback.format_exc()[-1500:]
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    from small_gpu import peak_rss_gib  # this process's VmHWM (benchmarks/ is on sys.path: the script's folder)

    row["host_peak_rss_gib"] = peak_rss_gib()
    return row


def writer(args) -> dict:
    import torch

    from family_folders import write_folder

    took = write_folder(args.family, Path(args.ckpt), args.tiny, args.device)
    took["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    return took


def spawn(args, extra: list, timeout: float) -> dict | None:
    """This script again in a fresh process; its `ROW {json}` line, or None with the error in `why`."""
    cmd = [sys.executable, __file__, "--family", args.family, "--device", args.device, "--ckpt", args.ckpt,
           "--tmp", args.tmp, "--gens", str(args.gens),
           "--diffusers-gens", str(args.diffusers_gens),
           "--cfg-gens", str(args.cfg_gens), *(["--tiny"] if args.tiny else []), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
    return row or {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}


def fmt(v, nd=1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else ""


def stages(t: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in t.items())


def table(rows: list) -> str:
    lines = ["| family | config | load s | 1st gen s | 2nd gen s | last gen's stages (s) | peak GPU GiB | host peak RSS GiB |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['config']} | failed: {r['error'][:140]} | | | | | |")
            continue
        last = r.get("gen2_timings") or r.get("gen1_timings") or {}
        lines.append(f"| {r['family']} | {r['config']} | {fmt(r.get('load_s'))} | {fmt(r.get('gen1_s'), 2)} | "
                     f"{fmt(r.get('gen2_s'), 2)} | {stages(last)} | {fmt(r.get('peak_gpu_gib'))} | "
                     f"{fmt(r.get('host_peak_rss_gib'))} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="hunyuan15,qwen-image")
    ap.add_argument("--configs", default="default", help="comma-separated names, 'default' or 'all' (each family's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny configs: checks the whole logic (CPU)")
    ap.add_argument("--gens", type=int, default=2, help="generations per configuration (the first pays warm-up)")
    ap.add_argument("--diffusers-gens", type=int, default=1,
                    help="diffusers' generations per configuration (eager: nothing to compile; 2 to see its warm-up)")
    ap.add_argument("--cfg-gens", type=int, default=1, help="ours' generations in a CFG configuration")
    ap.add_argument("--ckpt", default="/dev/shm/lx2v_e2e_family", help="where the folder is written (RAM by default)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--timeout", type=float, default=420, help="seconds per configuration's process")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)   # a child: run this configuration
    ap.add_argument("--write", action="store_true", help=argparse.SUPPRESS)  # a child: write the folder
    args = ap.parse_args()
    args.folder = str(Path(args.ckpt) / "model")
    if args.write:
        print("ROW " + json.dumps(writer(args)), flush=True)
        return
    if args.config:
        print("ROW " + json.dumps(child(args)), flush=True)
        return
    # a `timeout` around this script sends SIGTERM: exit through the `finally`s, so that subprocess.run
    # kills the running configuration (it would hold the GPU for the next part) and the folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"commit": args.commit, "date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device, "tiny": args.tiny,
            "gens": args.gens, "diffusers_gens": args.diffusers_gens,
            "cfg_gens": args.cfg_gens, "checkpoint_dir": args.ckpt, "write": {}}
    rows: list = []
    families = [f for f in args.family.split(",") if f]
    for family in families:
        args.family = family
        names = {"default": DEFAULT_CONFIGS[family], "all": ",".join(CONFIGS[family])}.get(args.configs, args.configs)
        names = [n for n in names.split(",") if n in CONFIGS[family]]
        try:
            t0 = time.perf_counter()
            meta["write"][family] = spawn(args, ["--write"], args.timeout)
            meta["write"][family]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(family, "folder written", json.dumps(meta["write"][family]), flush=True)
            (out / "e2e_family.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
            if "error" in meta["write"][family]:
                rows.append({"family": family, "config": "write the folder", "error": meta["write"][family]["error"]})
                continue
            for name in names:
                row = spawn(args, ["--config", name], args.timeout)
                row.setdefault("family", family)
                row.setdefault("config", name)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "engine_log")}), flush=True)
                (out / "e2e_family.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        finally:
            shutil.rmtree(args.ckpt, ignore_errors=True)
    (out / "e2e_family.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = table(rows)
    (out / "e2e_family.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
