"""GPU check of the Wan DiTs at full size: accuracy of bf16 vs an fp32 run, and speed, ours vs diffusers.

Tasks: t2v / i2v (Wan2.1; a Wan2.2 T2V-A14B expert is the Wan2.1 14B t2v shape), i2v22 (a Wan2.2
I2V-A14B expert: in 36, no CLIP branch, y only), ti2v (Wan2.2 TI2V-5B: 48 channels, VAE stride 16,
a per-token timestep [1, L] with 0 on the first latent frame's tokens, as its image-to-video runs).

One device call does everything (see .library device notes): random fp32 weights for the chosen
shape are drawn once on the GPU and kept on the host; each model (ours, diffusers' WanTransformer3DModel)
is built on the meta device and loaded from them, in turn, so only one model is on the GPU at a time.

    python benchmarks/gpu_check.py --size 14B --layers 40 --out $OUT

Accuracy: ||y - y_ref|| / ||y_ref|| where y_ref is diffusers in fp32 (TF32 off) on the same weights.
Diffusers runs as `from_pretrained(torch_dtype=bf16)` would run it: its `_keep_in_fp32_modules` stay fp32.
Speed: median of --repeat forwards (CUDA events) after a warm-up, one denoising step (one CFG branch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

DEV = "cuda"  # --device cpu runs the same script on a tiny --size for a dry run
SIZES = {"1.3B": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
         "14B": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
         "5B": dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
         "tiny": dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2)}
RES = {"480p": (480, 832), "720p": (720, 1280), "704p": (704, 1280)}


def random_official_weights(model_cls, cfg, seed: int) -> dict:
    """fp32 random weights with the official key names, drawn on the GPU, kept on the host."""
    with torch.device("meta"):
        shell = model_cls(cfg)
    g = torch.Generator(DEV).manual_seed(seed)
    out = {}
    for name, p in shell.state_dict().items():
        t = torch.empty(p.shape, device=DEV, dtype=torch.float32)
        if p.ndim == 1 and "bias" in name:
            t.normal_(0, 0.02, generator=g)
        elif p.ndim == 1 or "norm" in name:
            t.normal_(1.0, 0.05, generator=g)
        elif "modulation" in name:
            t.normal_(0, p.shape[-1] ** -0.5, generator=g)
        else:
            t.normal_(0, (p[0].numel()) ** -0.5, generator=g)
        out[name] = t.cpu()
        del t
    return out


def timed(fn, repeat: int) -> tuple[torch.Tensor, float]:
    if DEV == "cpu":
        return fn(), float("nan")
    y = fn()  # warm-up (also the output we compare)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    times.sort()
    return y, times[len(times) // 2] if times else float("nan")


def build_ours(cfg, sd, dtype, attention):
    from lightx2v.loading.state_dict import load_into
    from lightx2v.models.wan.dit import WanModel
    from lightx2v.ops.attention import resolve_attention, set_attention_backend

    with torch.device("meta"):
        m = WanModel(cfg)
    load_into(m, sd, dtype=dtype, device=DEV, keep_fp32=WanModel._keep_in_fp32, what="DiT")
    backend = resolve_attention(attention, torch.device(DEV), dtype)
    set_attention_backend(m, backend)
    return m.eval().requires_grad_(False), backend.name


def build_diffusers(cfg, sd, dtype):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from lightx2v.models.wan.dit import dit_key_from_diffusers

    kw = dict(patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads,
              attention_head_dim=cfg.dim // cfg.num_heads, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
              text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps)
    if cfg.has_image_branch:
        kw.update(image_dim=1280, added_kv_proj_dim=cfg.dim)
    with init_empty_weights():  # parameters on meta, buffers (RoPE tables) real
        m = WanTransformer3DModel(**kw)
    keep = tuple(getattr(WanTransformer3DModel, "_keep_in_fp32_modules", None) or ())
    mine = {}
    for dk, p in m.state_dict().items():
        ok = dit_key_from_diffusers(dk)
        t = sd[ok]
        fp32 = dtype == torch.float32 or any(k in dk.split(".") for k in keep)
        mine[dk] = t.to(device=DEV, dtype=torch.float32 if fp32 else dtype)
    m.load_state_dict(mine, strict=True, assign=True)
    return m.to(DEV).eval().requires_grad_(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="14B", choices=SIZES)
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the full model")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--task", default="t2v", choices=("t2v", "i2v", "i2v22", "ti2v"))
    ap.add_argument("--skip-ours-fp32", action="store_true", help="skip our fp32 parity run (saves a slow fp32 forward)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timestep", type=float, default=757.0)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--commit", default=None, help="commit being measured (the device copy has no .git)")
    ap.add_argument("--res", dest="res", default="480p", choices=RES)
    args = ap.parse_args()
    global DEV
    DEV = args.device
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shape = dict(SIZES[args.size])
    if args.layers:
        shape["num_layers"] = args.layers
    ti2v = args.task == "ti2v"
    model_type = {"i2v22": "i2v"}.get(args.task, args.task)
    in_dim, out_dim = {"t2v": (16, 16), "i2v": (36, 16), "i2v22": (36, 16), "ti2v": (48, 48)}[args.task]
    extra = dict(image_dim=None) if args.task == "i2v22" else {}
    cfg = WanDiTConfig(model_type=model_type, patch_size=(1, 2, 2), text_len=512, in_dim=in_dim, freq_dim=256,
                       text_dim=4096, out_dim=out_dim, **extra, **shape)
    h, w = RES[args.res]
    stride = 16 if ti2v else 8
    lat = (1, out_dim, (args.frames - 1) // 4 + 1, h // stride, w // stride)
    g = torch.Generator(DEV).manual_seed(1)
    x = torch.randn(lat, device=DEV, generator=g)
    t = torch.tensor([args.timestep], device=DEV)
    if ti2v:  # TI2V image-to-video: one timestep per token, 0 on the first (clean image) latent frame
        from lightx2v.models.wan.dit import token_timesteps

        t = token_timesteps(t, (lat[2], lat[3] // 2, lat[4] // 2), clean_frames=1)
    ctx = torch.randn(1, 512, 4096, device=DEV, generator=g) * 0.2
    ctx[:, 100:] = 0  # a 100-token prompt, zero-padded as the text encoder output is
    tokens = lat[2] * lat[3] * lat[4] // 4
    # I2V: the image condition (mask + first-frame latents) and 257 CLIP tokens
    y = torch.cat([torch.zeros(1, 4, *lat[2:], device=DEV), torch.randn(1, 16, *lat[2:], device=DEV, generator=g)], 1)
    y[:, :4, 0] = 1
    clip = torch.randn(1, 257, 1280, device=DEV, generator=g)

    t0 = time.time()
    sd = random_official_weights(WanModel, cfg, seed=0)
    print(f"weights: {sum(v.numel() for v in sd.values()) / 1e9:.2f} B params in {time.time() - t0:.0f}s", flush=True)

    res = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__, "size": args.size,
           "layers": cfg.num_layers, "res": args.res, "frames": args.frames, "tokens": tokens, "timestep": args.timestep}
    res["commit"] = args.commit
    if not res["commit"]:
        try:
            res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
        except OSError:
            res["commit"] = "?"
    import diffusers

    res["diffusers"] = diffusers.__version__

    def run(name, build, call, dtype):
        if DEV == "cuda":
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        m = build(dtype)
        with torch.no_grad():
            y, sec = timed(lambda m=m: call(m, dtype), args.repeat if dtype != torch.float32 else 0)
        y = y.float().cpu()
        res[f"{name}_s"] = sec
        res[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
        print(f"{name}: {sec:.3f}s/forward, peak {res[f'{name}_peak_gib']:.1f} GiB", flush=True)
        del m
        if DEV == "cuda":
            torch.cuda.empty_cache()
        return y

    i2v, clip_branch = args.task in ("i2v", "i2v22"), cfg.has_image_branch

    def ours_call(m, dt):
        if i2v:
            return m(x.to(dt), t, ctx.to(dt), clip_fea=clip.to(dt) if clip_branch else None, y=y.to(dt))
        return m(x.to(dt), t, ctx.to(dt))

    def diff_call(m, dt):
        extra = dict(encoder_hidden_states_image=clip.to(dt)) if clip_branch else {}
        h = torch.cat([x, y], 1) if i2v else x
        return m(hidden_states=h.to(dt), timestep=t, encoder_hidden_states=ctx.to(dt), return_dict=False, **extra)[0]
    backend = {}

    def ours_build(dt):
        m, backend["name"] = build_ours(cfg, sd, dt, "auto" if dt != torch.float32 else "torch_sdpa")
        return m

    y_ref = run("diffusers_fp32", lambda dt: build_diffusers(cfg, sd, dt), diff_call, torch.float32)
    y_ours32 = None if args.skip_ours_fp32 else run("ours_fp32", ours_build, ours_call, torch.float32)
    y_ours = run("ours_bf16", ours_build, ours_call, torch.bfloat16)
    res["ours_attention"] = backend["name"]
    y_diff = run("diffusers_bf16", lambda dt: build_diffusers(cfg, sd, dt), diff_call, torch.bfloat16)

    res["task"] = args.task
    res["err_ours_fp32_vs_ref"] = None if y_ours32 is None else rel(y_ours32, y_ref)
    res["err_ours_bf16"] = rel(y_ours, y_ref)
    res["err_diffusers_bf16"] = rel(y_diff, y_ref)
    res["err_ratio"] = res["err_ours_bf16"] / res["err_diffusers_bf16"]
    res["pass"] = bool(res["err_ratio"] <= 1.1 and (y_ours32 is None or res["err_ours_fp32_vs_ref"] < 1e-3))
    res["speedup"] = res["diffusers_bf16_s"] / res["ours_bf16_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_check_{args.task}_{args.size}_{args.res}_{cfg.num_layers}l.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
