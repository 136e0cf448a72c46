"""Attention kernels at Wan shapes: sage8 (our 8-bit Triton kernel) against cuDNN / flash SDPA.

For each shape (q, k, v: [B, L, H, D], bf16, no mask) it measures
  * error of every sage8 format this GPU runs (fp8/fp8, int8/fp8 on sm89+; int8/fp16 everywhere)
    and of the SDPA kernels, against an fp32 reference computed for a subset of --ref-rows query
    rows (with the full K/V): relative L2 and cosine similarity over those rows;
  * time (triton.testing.do_bench, median): sage8 end to end (smooth + quantize + attention) and
    its attention kernel alone (autotuned; the chosen config is printed), sdpa_cudnn, sdpa_flash;
    TOPS-equivalent = 4 * B * H * Lq * Lk * D / time.
Then a torch.compile(fullgraph=True) check that the torch.library op traces without graph breaks.
A failure in one shape or kernel prints the error and the run goes on. Results:
a table on stdout and JSON in DIR/attention_kernels.json (rewritten after every shape).

    python benchmarks/attention_kernels.py --out $OUT                 # on the GPU, ~3 minutes
    python benchmarks/attention_kernels.py --dry-run --out /tmp/ak     # CPU: tiny shapes, Triton interpreter

Inputs: q ~ N(0, 1), k ~ N(0, 1) + a per-channel offset ~ N(0, 2) (what smoothing removes), v ~ N(0, 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# name -> (B, Lq, Lk, H, D)
SHAPES = {
    "14B-480P": (1, 32760, 32760, 40, 128),
    "14B-720P": (1, 75600, 75600, 40, 128),
    "1.3B-480P": (1, 32760, 32760, 12, 128),
    "odd-32761": (1, 32761, 32761, 40, 128),
    "D64": (1, 32760, 32760, 40, 64),
    "cross-512": (1, 32760, 512, 40, 128),
}
DRY_SHAPES = {"tiny-odd": (1, 150, 131, 2, 64), "tiny-cross": (1, 70, 20, 2, 128)}
PATHS = (("fp8", "fp8"), ("int8", "fp8"), ("int8", "fp16"))
SDPA = ("sdpa_cudnn", "sdpa_flash")


def make_inputs(shape, device, dtype, seed=0):
    B, Lq, Lk, H, D = shape
    g = torch.Generator(device).manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=g, device=device)  # q: [B, Lq, H, D]
    k = torch.randn(B, Lk, H, D, generator=g, device=device)  # k: [B, Lk, H, D]
    k += 2.0 * torch.randn(1, 1, H, D, generator=g, device=device)
    v = torch.randn(B, Lk, H, D, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@torch.no_grad()
def reference_rows(q, k, v, rows, heads_per_chunk=8):
    """fp32 softmax(q k^T / sqrt(D)) v for the query rows `rows` only, a few heads at a time: [B, R, H, D]."""
    B, _, H, D = q.shape
    out = torch.empty(B, len(rows), H, D, device=q.device, dtype=torch.float32)
    for h0 in range(0, H, heads_per_chunk):
        hs = slice(h0, h0 + heads_per_chunk)
        qf = q[:, rows, hs].float().transpose(1, 2)  # [B, h, R, D]
        kf, vf = (t[:, :, hs].float().transpose(1, 2) for t in (k, v))  # [B, h, Lk, D]
        s = torch.matmul(qf, kf.transpose(-1, -2)) / math.sqrt(D)  # [B, h, R, Lk]
        out[:, :, hs] = torch.matmul(s.softmax(-1), vf).transpose(1, 2)
    return out


def errors(out, ref):
    o, r = out.float().flatten(), ref.float().flatten()
    return ((o - r).norm() / r.norm()).item(), torch.nn.functional.cosine_similarity(o, r, dim=0).item()


def bench(fn, device):
    """Median milliseconds; on CPU (dry run) one timed call."""
    if device.type == "cpu":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def tuned_config(sage8) -> str:
    cfg = getattr(sage8._attn_kernel_tuned, "best_config", None)
    return "interpreter default" if sage8._interpreting() else str(cfg)


def run_kernel(entry, fn, ref, rows, flops, device, extra=None):
    """Error and time of one kernel; a failure goes into the entry instead of stopping the run."""
    try:
        out = fn()
        rel, cos = errors(out[:, rows], ref)
        del out
        ms = bench(fn, device)
        entry.update(ms=ms, tops=flops / (ms * 1e-3) / 1e12, rel_l2=rel, cos=cos, **(extra() if extra else {}))
    except Exception as exc:  # one kernel's failure must not end the run
        entry["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        traceback.print_exc(limit=3)
    return entry


def run_shape(name, shape, paths, args, device, dtype):
    from lightx2v.ops.attention import resolve_attention
    from lightx2v.ops.triton import sage8

    B, Lq, Lk, H, D = shape
    flops = 4 * B * H * Lq * Lk * D
    q, k, v = make_inputs(shape, device, dtype)
    rows = torch.linspace(0, Lq - 1, min(args.ref_rows, Lq), device=device).round().long().unique()  # keeps the tail row
    ref = reference_rows(q, k, v, rows)
    results = []
    for qk, pv in paths:
        entry = dict(kernel=f"sage8 {qk}/{pv}")
        run_kernel(entry, lambda: sage8.sage8_attention(q, k, v, qk, pv), ref, rows, flops, device,
                   extra=lambda: dict(config=tuned_config(sage8)))
        if "error" not in entry:
            try:  # the attention kernel alone, on prepared tensors: what the quant pass costs is the difference
                prepared = sage8.prepare(q, k, v, qk, pv)
                o = torch.empty_like(q)
                ms = bench(lambda: sage8.attend(*prepared, o, Lk), device)
                entry.update(attn_ms=ms, attn_tops=flops / (ms * 1e-3) / 1e12)
                del prepared, o
            except Exception as exc:
                entry["attn_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        results.append(entry)
    for backend_name in SDPA if device.type == "cuda" else ():
        entry = dict(kernel=backend_name)
        try:
            backend = resolve_attention(backend_name, device, dtype)
        except Exception as exc:
            entry["error"] = str(exc)[:300]
        else:
            run_kernel(entry, lambda: backend(q, k, v), ref, rows, flops, device)
        results.append(entry)
    return dict(name=name, B=B, Lq=Lq, Lk=Lk, H=H, D=D, ref_rows=len(rows), results=results)


def compile_check(device, dtype, paths):
    """torch.compile(fullgraph=True) through the op and through sage8_attention: no graph break, same bits."""
    from lightx2v.ops.triton import sage8

    if device.type != "cuda":
        return dict(skipped="needs CUDA (inductor does not run the interpreter)")
    if not hasattr(torch.ops.lightx2v, "sage8_attention"):
        return dict(skipped="torch has no torch.library.triton_op")
    q, k, v = make_inputs((1, 4096, 4096, 4, 128), device, dtype, seed=1)
    qk, pv = paths[0]
    res = {}
    for label, fn in (("op", lambda a, b, c: torch.ops.lightx2v.sage8_attention(a, b, c, qk, pv) * 2),
                      ("wrapper", lambda a, b, c: sage8.sage8_attention(a, b, c) * 2)):
        try:
            torch._dynamo.reset()
            eager = fn(q, k, v)
            compiled = torch.compile(fn, fullgraph=True)(q, k, v)
            res[label] = dict(ok=True, max_abs_diff=(compiled.float() - eager.float()).abs().max().item())
        except Exception as exc:
            res[label] = dict(ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    return res


def write_json(out_dir: Path, payload: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "attention_kernels.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out_dir / "attention_kernels.json")  # atomic: a killed run leaves the last whole file


def print_table(shape_result: dict) -> None:
    s = shape_result
    print(f"\n== {s['name']}: B={s['B']} Lq={s['Lq']} Lk={s['Lk']} H={s['H']} D={s['D']} (error on {s['ref_rows']} rows)")
    print(f"{'kernel':<20}{'ms':>9}{'TOPS':>8}{'attn ms':>9}{'attn TOPS':>10}{'rel L2':>9}{'cos':>9}  config")
    for r in s["results"]:
        if "error" in r:
            print(f"{r['kernel']:<20}  ERROR {r['error']}")
            continue
        attn = f"{r['attn_ms']:>9.3f}{r['attn_tops']:>10.1f}" if "attn_ms" in r else " " * 19
        print(f"{r['kernel']:<20}{r['ms']:>9.3f}{r['tops']:>8.1f}{attn}{r['rel_l2']:>9.4f}{r['cos']:>9.5f}  "
              f"{r.get('config', '')}")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "./out", help="folder for attention_kernels.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter: checks the script")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--paths", default=None, help="comma-separated qk/pv formats, e.g. fp8/fp8,int8/fp16")
    p.add_argument("--ref-rows", type=int, default=1024, help="query rows checked against fp32")
    p.add_argument("--no-compile-check", action="store_true")
    args = p.parse_args()

    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (first import of sage8)
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32
    import triton

    from lightx2v.ops.triton import sage8

    shapes = DRY_SHAPES if args.dry_run else SHAPES
    if args.shapes:
        shapes = {n: shapes[n] for n in args.shapes.split(",")}
    paths = [tuple(x.split("/")) for x in args.paths.split(",")] if args.paths else list(PATHS)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        paths = [pth for pth in paths if "fp8" not in pth]
    payload = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                   torch=torch.__version__, triton=triton.__version__, dtype=str(dtype),
                   default_formats=sage8.default_formats(device),
                   inputs="q~N(0,1); k~N(0,1)+N(0,2) per channel; v~N(0,1)", shapes=[])
    print(f"device {payload['device']}  torch {torch.__version__}  triton {triton.__version__}  "
          f"sage8 default {payload['default_formats']}")
    t0 = time.perf_counter()
    for name, shape in shapes.items():
        try:
            result = run_shape(name, shape, paths, args, device, dtype)
        except Exception as exc:  # e.g. out of memory for the inputs or the reference
            traceback.print_exc(limit=3)
            result = dict(name=name, shape=shape, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            print(f"\n== {name}: ERROR {result['error']}")
        else:
            print_table(result)
        payload["shapes"].append(result)
        write_json(Path(args.out), payload)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.no_compile_check:
        payload["compile_check"] = compile_check(device, dtype, paths)
        print(f"\ntorch.compile(fullgraph=True): {payload['compile_check']}")
    payload["seconds"] = time.perf_counter() - t0
    write_json(Path(args.out), payload)
    print(f"\n{payload['seconds']:.0f} s; wrote {Path(args.out) / 'attention_kernels.json'}")


if __name__ == "__main__":
    main()
