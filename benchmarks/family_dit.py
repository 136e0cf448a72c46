"""One DiT forward of the newer families at full size, ours beside diffusers in the same run.

Qwen-Image (the 20B MMDiT, 1328 x 1328: 6,889 image tokens) and HunyuanVideo-1.5 (the 8.3B DiT,
480P / 720P x 121 frames: 49,290 / 111,600 tokens). Random weights drawn on the GPU (timing does not
depend on them; random_weights.fill_random_ keeps activations finite) in diffusers'
QwenImageTransformer2DModel / HunyuanVideo15Transformer3DModel, run once in fp32 (TF32 off: the
error reference); then the same tensors in bf16 are loaded by ours (HunyuanVideo-1.5 through our
diffusers <-> official key map) and diffusers' model is cast to bf16. Rows: ours eager, ours with compiled blocks, (Qwen-Image) ours
w8a8-fp8 compiled, diffusers eager, diffusers best (`compile_repeated_blocks` + `_native_cudnn`
attention); s/forward (median after the first call), first call, peak GiB, relative L2 against the
fp32 output. Results in $OUT/family_dit.json and a markdown table.

    python benchmarks/family_dit.py --family qwen-image --out $OUT --commit <sha>
    python benchmarks/family_dit.py --family hunyuan15 --res 480p,720p --out $OUT --commit <sha>
    python benchmarks/family_dit.py --family qwen-image --tiny --device cpu --out /tmp/f   # the logic
    python benchmarks/family_dit.py --ssta --res 480p --out $OUT --commit <sha>    # SSTA vs dense (480P)
    python benchmarks/family_dit.py --ssta --tiny --device cpu --ssta-topk 64,16,4,2 --out /tmp/s \
        --ssta-param '{"tile_size": [2, 4, 4]}'                                       # the CPU error table
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from random_weights import fill_random_  # noqa: E402

HY_RES = {"480p": (480, 848), "720p": (720, 1280)}
QWEN_TINY = dict(num_layers=2, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                 axes_dims_rope=(8, 12, 12))
HY_TINY = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, rope_axes_dim=(8, 12, 12), text_embed_dim=48,
               text_embed_2_dim=40, image_embed_dim=24)  # diffusers' names; {}: its defaults, the 8.3B


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int, dev: str):
    sync(dev)
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    sync(dev)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return out, first, (sorted(times)[len(times) // 2] if times else first)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# -- the families: build ours on meta + random weights, convert to diffusers, make inputs, call --------
class Qwen:
    name = "Qwen-Image 20B"

    def __init__(self, args) -> None:
        from lightx2v.models.qwen_image.dit import QwenImageDiT, QwenImageDiTConfig

        self.cls, self.cfg = QwenImageDiT, QwenImageDiTConfig(**(QWEN_TINY if args.tiny else {}))
        side = 64 if args.tiny else args.size
        self.grid = (1, side // 16, side // 16)  # 8x VAE, 2x2 patches
        self.shapes = [f"{side}x{side}"]

    def diffusers(self, dev):
        from diffusers import QwenImageTransformer2DModel

        with torch.device(dev):
            return QwenImageTransformer2DModel(**self.cfg.to_diffusers()).eval()

    def inputs(self, shape: str, dev: str, seed: int = 1):
        g = torch.Generator(dev).manual_seed(seed)
        n = self.grid[0] * self.grid[1] * self.grid[2]
        x = torch.randn(1, n, self.cfg.in_channels, device=dev, generator=g)
        ctx = torch.randn(1, 120, self.cfg.joint_attention_dim, device=dev, generator=g)  # a 120-token prompt
        # t = 500: exact in bf16 (diffusers' bf16 run takes t / 1000 in bf16; 0.7 would round to 0.69921875,
        # and that moves the time embedding more than bf16's arithmetic moves the output)
        return dict(x=x, t=torch.tensor([500.0], device=dev), ctx=ctx)

    def ours_call(self, m, i, dtype):
        return lambda: m(i["x"].to(dtype), i["t"], i["ctx"].to(dtype), [self.grid])

    def diff_call(self, m, i, dtype):
        return lambda: m(hidden_states=i["x"].to(dtype), encoder_hidden_states=i["ctx"].to(dtype),
                         timestep=(i["t"] / 1000).to(dtype), img_shapes=[[self.grid]], return_dict=False)[0]

    def ours_sd(self, sd: dict) -> dict:
        return sd  # the released Qwen-Image folders are diffusers': the same names


class Hunyuan:
    name = "HunyuanVideo-1.5 8.3B"

    def __init__(self, args) -> None:
        from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
        from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig

        self.dcfg = HY_TINY if args.tiny else {}
        self.cls, self.cfg = HunyuanVideo15DiT, HunyuanVideo15DiTConfig.from_diffusers(self.dcfg)
        self.shapes = ["tiny"] if args.tiny else args.res.split(",")
        self.tiny = args.tiny

    def diffusers(self, dev):
        import diffusers

        with torch.device(dev):
            return diffusers.HunyuanVideo15Transformer3DModel(**self.dcfg).eval()

    def ours_sd(self, sd: dict) -> dict:
        from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers

        return state_dict_from_diffusers(sd)

    def inputs(self, shape: str, dev: str, seed: int = 1):
        g = torch.Generator(dev).manual_seed(seed)
        h, w = (64, 64) if self.tiny else HY_RES[shape]
        f = 5 if self.tiny else 121
        lat = (1, 65, (f - 1) // 4 + 1, h // 16, w // 16)  # 32 latents + 32 condition latents + mask (T2V: zeros)
        x = torch.randn(lat, device=dev, generator=g)
        x[:, 32:] = 0
        c = self.cfg
        text_mask = torch.zeros(1, 1000, dtype=torch.int64, device=dev)
        text_mask[:, :120] = 1  # a 120-token prompt in the reference's 1000-token padding
        return dict(x=x, t=torch.tensor([704.0], device=dev),  # exact in bf16 (diffusers' run casts it)
                    text=torch.randn(1, 1000, c.text_states_dim, device=dev, generator=g), text_mask=text_mask,
                    byt5=torch.zeros(1, 256, c.byt5_dim, device=dev), byt5_mask=torch.zeros(1, 256, dtype=torch.int64, device=dev),
                    image=torch.zeros(1, 729, c.vision_states_dim, device=dev))

    def ours_call(self, m, i, dtype):
        return lambda: m(i["x"].to(dtype), i["t"], i["text"].to(dtype), i["text_mask"], i["byt5"].to(dtype),
                         i["byt5_mask"], i["image"].to(dtype))

    def diff_call(self, m, i, dtype):
        return lambda: m(i["x"].to(dtype), i["t"].to(dtype), i["text"].to(dtype), i["text_mask"],
                         encoder_hidden_states_2=i["byt5"].to(dtype), encoder_attention_mask_2=i["byt5_mask"],
                         image_embeds=i["image"].to(dtype)).sample


FAMILIES = {"qwen-image": Qwen, "hunyuan15": Hunyuan}


# -- the runs -----------------------------------------------------------------------------------------
def build_ours(fam, dev: str, dtype, sd: dict | None = None, attention: str = "auto", quant: str | None = None):
    """Ours: random fp32 weights (sd None), or `sd` cast as our loader casts (the model's
    `_keep_in_fp32` params stay fp32; `quant`: quantized on the way, as a quantized load does)."""
    from lightx2v.loading.dit_files import load_dit_weights
    from lightx2v.ops.attention import resolve_attention, set_attention_backend
    from lightx2v.quant import apply_quant

    with torch.device("meta"):
        m = fam.cls(fam.cfg)
    if sd is None:
        m = fill_random_(m.to_empty(device=dev), dev).float()
    else:
        if quant is not None:
            apply_quant(m, quant, compute_dtype=dtype)
        load_dit_weights(m, sd, dtype=dtype, device=dev)
    set_attention_backend(m, resolve_attention(attention, dev, dtype))
    return m.eval()


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def run(rows, fam, shape, label, call, dev, repeat, ref=None, model=None):
    """One row. peak_gib: the model's own peak (its weights + what the call allocated above the memory
    held when it started: another model kept for the next rows does not count)."""
    base = 0
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    row = {"family": fam.name, "shape": shape, "run": label}
    try:
        out, first, s = timed(call, repeat, dev)
        above = (torch.cuda.max_memory_allocated() - base) if dev == "cuda" else 0
        row.update(s=s, first_s=first, peak_gib=((model_bytes(model) if model is not None else 0) + above) / 2**30)
        if ref is not None:
            row["rel_l2_vs_fp32"] = rel(out.float(), ref)
    except Exception as exc:  # record and go on: one failing row must not lose the others
        out = None
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        row["traceback"] = traceback.format_exc()[-1500:]
    rows.append(row)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "traceback"}), flush=True)
    return out


def family_rows(fam, args, rows) -> None:
    """diffusers' model first, in fp32 with random weights (TF32 off: the error reference), then its
    tensors in bf16 are the "file" ours loads (as our loader casts) and diffusers itself is cast to
    bf16 (as its from_pretrained(torch_dtype=bf16) does): the same weights on both sides."""
    from lightx2v.engine_config import CompileConfig
    from lightx2v.runtime.engine import compile_blocks

    dev, bf16 = args.device, torch.bfloat16
    backend = "eager" if args.tiny else "inductor"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = fill_random_(fam.diffusers(dev), dev)
    refs = {}
    for shape in fam.shapes:
        if args.fp32_shapes == "all" or shape in args.fp32_shapes.split(","):
            if args.fp32_ref == "diffusers":
                refs[shape] = run(rows, fam, shape, "diffusers fp32 (TF32 off, the reference)",
                                  fam.diff_call(ref, fam.inputs(shape, dev), torch.float32), dev, 0, model=ref)
            if refs.get(shape) is None:  # diffusers' fp32 path cannot run it (HunyuanVideo-1.5: masked SDPA at 49k tokens)
                m32 = build_ours(fam, dev, torch.float32, fam.ours_sd(ref.state_dict()))
                refs[shape] = run(rows, fam, shape, "ours fp32 (TF32 off, the reference instead)",
                                  fam.ours_call(m32, fam.inputs(shape, dev), torch.float32), dev, 0, model=m32)
                del m32
                gc.collect()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    sd = fam.ours_sd({k: v.to(bf16) for k, v in ref.state_dict().items()})
    ref = ref.to(bf16)
    gc.collect()
    ours = build_ours(fam, dev, bf16, sd)
    for shape in fam.shapes:
        run(rows, fam, shape, "ours eager", fam.ours_call(ours, fam.inputs(shape, dev), bf16), dev, args.repeat,
            refs.get(shape), model=ours)
    torch._dynamo.reset()
    n = 0 if args.skip_compiled else compile_blocks(ours, CompileConfig(enabled=True, backend=backend))
    for shape in fam.shapes if n else ():
        run(rows, fam, shape, f"ours compiled ({n} blocks)", fam.ours_call(ours, fam.inputs(shape, dev), bf16), dev,
            args.repeat, refs.get(shape), model=ours)
    del ours
    gc.collect()
    if args.fp8 and isinstance(fam, Qwen):
        torch._dynamo.reset()
        q = build_ours(fam, dev, bf16, sd, quant="w8a8-fp8" if dev == "cuda" else "w8a8-int8")
        compile_blocks(q, CompileConfig(enabled=True, backend=backend))
        for shape in fam.shapes:
            run(rows, fam, shape, "ours w8a8-fp8 compiled", fam.ours_call(q, fam.inputs(shape, dev), bf16), dev,
                args.repeat, refs.get(shape), model=q)
        del q
    del sd
    gc.collect()
    if args.no_diffusers:
        return
    for shape in fam.shapes:
        run(rows, fam, shape, "diffusers eager", fam.diff_call(ref, fam.inputs(shape, dev), bf16), dev, args.repeat,
            refs.get(shape), model=ref)
    if dev == "cuda" and not args.skip_compiled:
        torch._dynamo.reset()
        try:
            ref.set_attention_backend("_native_cudnn")
        except Exception as exc:
            rows.append({"family": fam.name, "run": "diffusers _native_cudnn", "error": str(exc)[:200]})
        ref.compile_repeated_blocks(fullgraph=True)
        for shape in fam.shapes:
            run(rows, fam, shape, "diffusers best (compile_repeated_blocks + _native_cudnn)",
                fam.diff_call(ref, fam.inputs(shape, dev), bf16), dev, args.repeat, refs.get(shape), model=ref)


# -- SSTA (HunyuanVideo-1.5's sparse attention, lightx2v.ops.ssta) beside dense attention -------------
SSTA_TINY_GRID = (29, 256, 256)  # frames, height, width: a (8, 16, 16) latent grid, 2,048 tokens


def ssta_rows(args, rows) -> None:
    """The DiT with attn_mode flex-block-attn (random weights), one forward with the "ssta" backend in
    its double blocks beside the same model dense ("auto"): time, peak, the tile pairs attended, and the
    relative L2 of the sparse output against the dense one; one attention call of the flex path against
    the tile-by-tile reference (ops/ssta.ssta_reference) at the same grid (a GPU correctness check).
    `--ssta-topk` sweeps top-k (per the reference's attn_param: halved at <= 31 frames)."""
    import dataclasses

    from lightx2v.ops.attention import get_backend, set_attention_backend
    from lightx2v.ops.ssta import SSTALayout, ssta_flex, ssta_reference

    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    fam = Hunyuan(args)
    param = json.loads(args.ssta_param) if args.ssta_param else {}
    for shape in fam.shapes:
        i = fam.inputs(shape, dev)
        if args.tiny:  # a grid big enough for tiles to matter
            f, h, w = SSTA_TINY_GRID
            g = torch.Generator(dev).manual_seed(2)
            i["x"] = torch.randn(1, 65, (f - 1) // 4 + 1, h // 16, w // 16, device=dev, generator=g)
            i["x"][:, 32:] = 0
        for topk in args.ssta_topk.split(","):
            p = {**param, **({"ssta_topk": int(topk)} if topk else {})}
            fam.cfg = dataclasses.replace(fam.cfg, attn_mode="flex-block-attn", attn_param=p)
            m = build_ours(fam, dev, dtype).to(dtype)
            grid = tuple(i["x"].shape[2:])
            seen = []
            density = _ssta_density(m, grid, seen)
            dense = run(rows, fam, shape, "dense (auto)", fam.ours_call(m, i, dtype), dev, args.repeat)
            set_attention_backend(m.double_blocks, get_backend("ssta"))
            extra = {"topk": m.sparse.for_grid(grid)[2], "tile": list(m.sparse.tile), "window": list(m.sparse.window)}
            out = run(rows, fam, shape, "ssta", fam.ours_call(m, i, dtype), dev, args.repeat, dense, extra)
            if out is not None:
                m.double_blocks[0].attn_backend = density
                with torch.no_grad():
                    fam.ours_call(m, i, dtype)()
                rows[-1]["tile_pairs_attended"] = seen[0] if seen else None
            q, k, v = (torch.randn(1, math.prod(grid) + 120, m.config.heads_num, m.config.head_dim, device=dev,
                                   dtype=dtype) for _ in range(3))
            lay = SSTALayout(grid, m.sparse)
            rows.append({"family": fam.name, "shape": shape, "run": "ssta flex vs tile-by-tile reference, one call",
                         **extra, "rel_l2_flex_vs_reference": rel(ssta_flex(q, k, v, lay).float(),
                                                                  ssta_reference(q, k, v, lay).float())})
            print(json.dumps(rows[-1]), flush=True)
            del m
            gc.collect()


def _ssta_density(model, grid, seen):
    """An "ssta" backend that also records the fraction of tile pairs the image queries attend."""
    from lightx2v.ops.attention import AttentionBackend, get_backend
    from lightx2v.ops.ssta import _split, ssta_flex, tile_mask

    def kernel(q, k, v, layout):
        (qi, ki, _), _, _ = _split(q, k, v, layout)
        seen.append(float(tile_mask(qi, ki, layout).float().mean()))
        return ssta_flex(q, k, v, layout)

    return AttentionBackend("ssta (recording)", lambda d, t: None, get_backend("ssta").kernel, layout_kernel=kernel)


def ssta_table(rows) -> str:
    lines = ["| shape | run | top-k | s/forward | peak GiB | tile pairs attended (block 0) | rel. L2 vs dense |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('shape', '')} | {r['run']} | | failed: {r['error'][:100]} | | | |")
        elif "rel_l2_flex_vs_reference" in r:
            lines.append(f"| {r['shape']} | {r['run']} | {r['topk']} | | | | flex vs reference "
                         f"{r['rel_l2_flex_vs_reference']:.1e} |")
        else:
            err = f"{r['rel_l2_vs_fp32']:.1e}" if "rel_l2_vs_fp32" in r else ""
            pairs = f"{r['tile_pairs_attended']:.2f}" if r.get("tile_pairs_attended") is not None else ""
            lines.append(f"| {r['shape']} | {r['run']} | {r.get('topk', '')} | {r['s']:.3f} | {r['peak_gib']:.1f} | "
                         f"{pairs} | {err} |")
    return "\n".join(lines)


def table(rows) -> str:
    lines = ["| model | shape | run | s/forward | first call s | peak GiB | rel. L2 vs the fp32 reference |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r.get('shape', '')} | {r['run']} | failed: {r['error'][:100]} | | | |")
            continue
        err = f"{r['rel_l2_vs_fp32']:.1e}" if "rel_l2_vs_fp32" in r else ""
        lines.append(f"| {r['family']} | {r['shape']} | {r['run']} | {r['s']:.3f} | {r['first_s']:.1f} | "
                     f"{r['peak_gib']:.1f} | {err} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="qwen-image,hunyuan15")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=1328, help="Qwen-Image: the image side")
    ap.add_argument("--res", default="480p,720p", help="HunyuanVideo-1.5: resolutions (121 frames)")
    ap.add_argument("--fp32-shapes", default="480p,1328x1328", help="shapes given an fp32 reference ('all')")
    ap.add_argument("--fp32-ref", default="diffusers", choices=("diffusers", "ours"),
                    help="the fp32 reference: diffusers' model (ours when it fails) or ours (4x cheaper for HV1.5)")
    ap.add_argument("--skip-compiled", action="store_true", help="eager rows only (an error-only run)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-fp8", dest="fp8", action="store_false")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny configs: checks the script's logic (CPU)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--ssta", action="store_true", help="HunyuanVideo-1.5: the DiT with SSTA vs dense (no diffusers)")
    ap.add_argument("--ssta-topk", default="", help="--ssta: top-k values to sweep ('': attn_param's)")
    ap.add_argument("--ssta-param", default="", help="--ssta: attn_param as JSON ('': the reference's defaults)")
    args = ap.parse_args()
    if args.tiny:
        args.fp32_shapes = "all"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "commit": args.commit, "date": time.strftime("%Y-%m-%d")}
    rows: list = []
    if args.ssta:
        ssta_rows(args, rows)
        (out / "family_dit_ssta.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        md = ssta_table(rows)
        (out / "family_dit_ssta.md").write_text(md + "\n")
        print(md)
        return
    for name in args.family.split(","):
        try:
            family_rows(FAMILIES[name](args), args, rows)
        except Exception as exc:
            rows.append({"family": name, "run": "setup", "error": f"{type(exc).__name__}: {exc}"[:300],
                         "traceback": traceback.format_exc()[-2000:]})
            print(rows[-1], flush=True)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        (out / "family_dit.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = table(rows)
    (out / "family_dit.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
