"""sage8's attention kernel under explicit launch configurations, to find what the autotune list lacks.

At one shape (default Wan2.1-14B 480P: q, k, v [1, 32760, 40, 128] bf16) the inputs are prepared once
(smooth + quantize, lightx2v.ops.triton.sage8.prepare), then `_attn_kernel` runs under each
configuration of --configs: BLOCK_M x BLOCK_N, warps, stages. Per configuration: compile outcome (a configuration that does not
compile or run is a row with its error, not the end of the run), median ms (triton.testing.do_bench),
TOPS-equivalent (4 B H Lq Lk D / time), and the largest difference from the autotuned kernel's output
(every configuration computes the same attention: a wrong one shows here). Rows: $OUT/sage8_configs.json.

    python benchmarks/sage8_configs.py --out $OUT                      # the default sweep (~2 min)
    python benchmarks/sage8_configs.py --configs 128x128w8s2,64x128w4s3 --out $OUT
    TRITON_INTERPRET=1 python benchmarks/sage8_configs.py --dry-run --out /tmp/s8   # CPU: the logic

A configuration is written BMxBNwWARPSsSTAGES, e.g. 128x128w8s2. (Triton 3.6's automatic warp
specialization of the key loop, `tl.range(..., warp_specialize=True)`, was tried this way on the H200
on 2026-11-30: 754 against 748 TOPS-equivalent for the best configuration, no gain; not kept.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT = "64x128w4s2,64x128w4s3,64x64w4s4,128x128w8s2,128x128w8s3,128x64w8s3,128x64w8s4"


def parse(spec: str) -> dict:
    m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", spec)
    if not m:
        raise SystemExit(f"bad configuration {spec!r}: expected BMxBNwWARPSsSTAGES, e.g. 128x128w8s2")
    bm, bn, w, s = m.groups()
    return dict(BLOCK_M=int(bm), BLOCK_N=int(bn), num_warps=int(w), num_stages=int(s))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,32760,40,128", help="B,L,H,D")
    ap.add_argument("--configs", default=DEFAULT)
    ap.add_argument("--formats", default="fp8/fp8")
    ap.add_argument("--dry-run", action="store_true", help="CPU (TRITON_INTERPRET=1), a tiny shape")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    from lightx2v.ops.triton import sage8

    dev = "cpu" if args.dry_run else "cuda"
    B, L, H, D = (1, 200, 2, 64) if args.dry_run else map(int, args.shape.split(","))
    g = torch.Generator(dev).manual_seed(0)
    q, k, v = (torch.randn(B, L, H, D, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(3))
    qk, pv = args.formats.split("/")
    prep = sage8.prepare(q, k, v, qk, pv)
    q8, k8, vt, qs, ks, vs = prep
    lq_pad, lk_pad = q8.shape[2], k8.shape[2]
    ref = torch.empty_like(q)
    if args.dry_run:
        sage8.attend(*prep, ref, L)
    else:
        sage8.attend(*prep, ref, L)
        torch.cuda.synchronize()
    consts = dict(HEAD_DIM=D, KBLK=sage8.KBLK, QK_INT8=q8.dtype == torch.int8, QBLK=sage8.QBLK,
                  PV_FP8=vt.dtype == torch.float8_e4m3fn, P_LOG2=sage8.P_LOG2, INTERPRET=args.dry_run)
    flops = 4 * B * H * L * L * D
    rows = [{"config": "autotuned", "chosen": str(getattr(sage8._attn_kernel_tuned, "best_config", None))}]
    for spec in args.configs.split(","):
        cfg = parse(spec)
        row = {"config": spec, **cfg}
        out = torch.empty_like(q)

        def launch(cfg=cfg, out=out):
            grid = (lq_pad // cfg["BLOCK_M"], B * H)
            sage8._attn_kernel[grid](q8, k8, vt, qs, ks, vs, out, *out.stride(), H, L, L, lq_pad, lk_pad,
                                      **consts, **cfg)
        try:
            launch()
            if args.dry_run:
                row["ms"] = None
            else:
                import triton.testing
                torch.cuda.synchronize()
                row["ms"] = triton.testing.do_bench(launch, warmup=5, rep=40)
                row["tops"] = flops / (row["ms"] * 1e-3) / 1e12
            row["max_diff_vs_autotuned"] = float((out.float() - ref.float()).abs().max())
        except Exception as exc:  # a configuration that cannot compile or run is a row, not the end
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            row["traceback"] = traceback.format_exc()[-800:]
        rows.append(row)
        print(json.dumps({k_: (round(v_, 3) if isinstance(v_, float) else v_) for k_, v_ in row.items()
                          if k_ != "traceback"}), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"commit": args.commit, "shape": [B, L, H, D], "formats": args.formats,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}
    (out_dir / "sage8_configs.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
