"""FlashAttention-3 (bf16, and fp8 e4m3) against cuDNN / flash SDPA at Wan's attention shapes.

Runs on the H200 after benchmarks/fa3_build.sh, with the built module on the path
(PYTHONPATH=/tmp/fa3site: flash_attn_interface.py + flash_attn_3/_C.abi3.so). For each shape
(q, k, v: [B, L, H, D] bf16, no mask, the inputs and error measure of attention_kernels.py, whose
functions this imports) it measures, against an fp32 reference on --ref-rows query rows:
  * fa3 bf16: flash_attn_interface.flash_attn_func(q, k, v);
  * flash_attn3: our registry's backend (lightx2v.ops.attention), the same kernel through our dispatch;
  * fa3 e4m3: q, k, v cast to float8_e4m3fn with one scale per (batch, head) (amax -> 448) and the
    inverse scales passed as q/k/v_descale [B, H]; `ms` is quantize + attention, `attn ms` the
    kernel alone on the prepared tensors (lossy: compare its error with the bf16 rows);
  * sdpa_cudnn, sdpa_flash (torch.nn.attention.sdpa_kernel, through our registry).
Time is triton.testing.do_bench's median; TOPS-equivalent = 4 * B * H * Lq * Lk * D / time. A
failing kernel or shape is printed and the run goes on. JSON in DIR/fa3_attention.json (rewritten
after each shape, atomically).

    PYTHONPATH=/tmp/fa3site:$PWD python3 benchmarks/fa3_attention.py --out $OUT     # device, ~1 min
    python benchmarks/fa3_attention.py --dry-run --out /tmp/fa3a                     # CPU: checks the script

The whole DiT with FA3: benchmarks/dit_step.py --configs compiled,compiled_fa3 (session.sh's `dit`
part with DIT_CONFIGS=compiled,compiled_fa3, in the same call after the `fa3` part or with .fa3site carried).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attention_kernels, run as a script
from attention_kernels import SHAPES, bench, make_inputs, print_table, reference_rows, run_kernel  # noqa: E402

FA3_SHAPES = ("14B-480P", "14B-720P", "1.3B-480P")
DRY_SHAPES = {"tiny": (1, 150, 150, 2, 128), "tiny-cross": (1, 70, 20, 2, 128)}
E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def fa3_module():
    import flash_attn_interface  # the FA3 build: fails here when the module is not on the path

    return flash_attn_interface


def first(out):
    """FA3's flash_attn_func returns the output, or (output, LSE) in some versions and with return_attn_probs."""
    return out[0] if isinstance(out, tuple) else out


def to_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, L, H, D] -> (float8_e4m3fn [B, L, H, D], descale fp32 [B, H]) with x ~= x8 * descale."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp_min(1e-6)  # [B, H]
    scale = (E4M3_MAX / amax).to(x.dtype)  # rounded to x's dtype first: the descale inverts what was applied
    x8 = (x * scale[:, None, :, None]).to(torch.float8_e4m3fn)
    return x8, (1.0 / scale.float()).contiguous()


def fa3_e4m3(fa3, q, k, v):
    (q8, qd), (k8, kd), (v8, vd) = (to_e4m3(t) for t in (q, k, v))
    return first(fa3.flash_attn_func(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd))


def error_entry(kernel: str, exc: Exception) -> dict:
    traceback.print_exc(limit=2)
    return dict(kernel=kernel, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def run_shape(name, shape, args, device, dtype) -> dict:
    from lightx2v.ops.attention import resolve_attention

    B, Lq, Lk, H, D = shape
    flops = 4 * B * H * Lq * Lk * D
    q, k, v = make_inputs(shape, device, dtype)
    rows = torch.linspace(0, Lq - 1, min(args.ref_rows, Lq), device=device).round().long().unique()
    ref = reference_rows(q, k, v, rows)
    results = []
    try:
        fa3 = fa3_module()
    except Exception as exc:
        results += [error_entry(n, exc) for n in ("fa3 bf16", "fa3 e4m3")]
        fa3 = None
    if fa3 is not None and args.kernels == "all":
        results.append(run_kernel(dict(kernel="fa3 bf16"), lambda: first(fa3.flash_attn_func(q, k, v)),
                                  ref, rows, flops, device))
    if fa3 is not None:
        entry = run_kernel(dict(kernel="fa3 e4m3"), lambda: fa3_e4m3(fa3, q, k, v), ref, rows, flops, device)
        if "error" not in entry:
            try:  # the kernel alone on prepared inputs: the quantize pass costs the difference
                (q8, qd), (k8, kd), (v8, vd) = (to_e4m3(t) for t in (q, k, v))
                ms = bench(lambda: fa3.flash_attn_func(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd), device)
                entry.update(attn_ms=ms, attn_tops=flops / (ms * 1e-3) / 1e12)
                del q8, k8, v8
            except Exception as exc:
                entry["attn_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        results.append(entry)
    for backend_name in ("flash_attn3", "sdpa_cudnn", "sdpa_flash") if args.kernels == "all" else ():
        try:
            backend = resolve_attention(backend_name, device, dtype)
        except Exception as exc:  # e.g. no CUDA in a dry run, or FA3 not importable
            results.append(dict(kernel=backend_name, error=str(exc).splitlines()[0][:300]))
            continue
        results.append(run_kernel(dict(kernel=backend_name), lambda: backend(q, k, v), ref, rows, flops, device))
    by = {r["kernel"]: r for r in results if "ms" in r}
    speed = {}  # how many times faster than cuDNN SDPA
    if "sdpa_cudnn" in by:
        for label, kernel, key in (("fa3 bf16", "fa3 bf16", "ms"), ("fa3 e4m3 (with quantize)", "fa3 e4m3", "ms"),
                                   ("fa3 e4m3 kernel", "fa3 e4m3", "attn_ms")):
            if key in by.get(kernel, {}):
                speed[label] = by["sdpa_cudnn"]["ms"] / by[kernel][key]
    return dict(name=name, B=B, Lq=Lq, Lk=Lk, H=H, D=D, ref_rows=len(rows), results=results, speedup=speed)


def build_info() -> dict:
    """What fa3_build.sh recorded next to the module (commits, nvcc, switches), if it is importable."""
    try:
        here = Path(fa3_module().__file__).parent
    except Exception as exc:
        return dict(error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    note = here / "FA3_BUILD.txt"
    return dict(path=str(here), build=note.read_text().splitlines() if note.exists() else None)


def write_json(out_dir: Path, payload: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "fa3_attention.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out_dir / "fa3_attention.json")  # a killed run leaves the last whole file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "./out", help="folder for fa3_attention.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script")
    p.add_argument("--shapes", default=None, help=f"comma-separated names from attention_kernels.py (default {','.join(FA3_SHAPES)})")
    p.add_argument("--ref-rows", type=int, default=1024, help="query rows checked against fp32")
    p.add_argument("--kernels", choices=("all", "e4m3"), default="all",
                   help="e4m3: FA3's FP8 kernel only (comparing builds: benchmarks/fa3_exp2.sh)")
    args = p.parse_args()

    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32
    names = args.shapes.split(",") if args.shapes else (list(DRY_SHAPES) if args.dry_run else list(FA3_SHAPES))
    table = DRY_SHAPES if args.dry_run else SHAPES
    payload = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
                   torch=torch.__version__, fa3=build_info(), dtype=str(dtype),
                   inputs="q~N(0,1); k~N(0,1)+N(0,2) per channel; v~N(0,1) (attention_kernels.make_inputs)",
                   e4m3="one scale per (batch, head): amax -> 448, descale [B, H] fp32", shapes=[])
    print(f"device {payload['device']}  torch {torch.__version__}  fa3 {payload['fa3']}")
    t0 = time.perf_counter()
    for name in names:
        try:
            result = run_shape(name, table[name], args, device, dtype)
        except Exception as exc:  # e.g. out of memory for the inputs or the reference
            traceback.print_exc(limit=3)
            result = dict(name=name, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            print(f"\n== {name}: ERROR {result['error']}")
        else:
            print_table(result)
            print("speedup (time of cuDNN / time of FA3):", {k: round(v, 3) for k, v in result["speedup"].items()})
        payload["shapes"].append(result)
        write_json(Path(args.out), payload)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    payload["seconds"] = time.perf_counter() - t0
    write_json(Path(args.out), payload)
    print(f"\n{payload['seconds']:.0f} s; wrote {Path(args.out) / 'fa3_attention.json'}")


if __name__ == "__main__":
    main()
