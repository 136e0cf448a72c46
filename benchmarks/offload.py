"""Block and phase offload against the resident DiT: one 14B-shaped forward, on one GPU.

Wan2.1-T2V-14B shape (40 blocks, dim 5120, ffn 13824) with random weights (benchmarks/random_weights.py
through dit_step.build_ours), 480P x 81 frames (32,760 tokens), a 512-token context, t = 757, eager,
the cross-attention K/V cached as the engine does. For bf16 and w8a8-fp8 weights, three rows each:
resident (every weight on the GPU), block offload and phase offload (lightx2v.runtime.block_offload:
the blocks in pinned host memory, `--buffers` GPU buffers, the next unit copied on a side stream).
Per row: seconds per forward (median of --repeat after one warm-up call, CUDA events), the overhead
against the resident row of the same precision, peak GPU memory (torch.cuda.max_memory_allocated over
the timed calls), the units copied per forward, the GPU buffers' size, and the largest difference of
the output against the resident one (the same kernels on the same numbers: 0 expected). `copy_s`: the
time of copying every unit once with nothing else running (the floor the overlap hides behind compute).
diffusers' WanTransformer3DModel on the same weights runs resident and with its block-level group
offloading on a stream (`--no-diffusers` skips it), for the same-run comparison.
`--lazy` adds a bf16 row with lazy load (lightx2v.runtime.lazy_load): the blocks written to a
safetensors file in --tmp and mapped back, read by the disk workers (from the page cache: the file
was just written). Rows go to $OUT/offload.json and, as a markdown table, to $OUT/offload.md.

    python benchmarks/offload.py --out $OUT --commit <sha>       # an H200: about 3 minutes
    python benchmarks/offload.py --lazy ...                       # + a lazy-load row (writes 26 GB to --tmp)
    python benchmarks/offload.py --device cpu --tiny              # a dry run of the script on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

import dit_step

SHAPES = {"14B-480p": (5120, 13824, 40, 40, (480, 832), 81), "tiny": (128, 256, 2, 4, (64, 64), 5)}


class _Pipe:
    """What apply_block_offload reads of a pipeline: its DiT."""

    def __init__(self, model):
        self.components, self.transformer_names = {"dit": model}, ("dit",)


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int, dev: str) -> tuple[torch.Tensor, float, list[float]]:
    """(first output, first call's seconds, seconds of each of `repeat` more calls)."""
    def once():
        if dev != "cuda":
            t0 = time.perf_counter(); y = fn(); return y, time.perf_counter() - t0
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); y = fn(); b.record(); torch.cuda.synchronize()
        return y, a.elapsed_time(b) / 1000

    y, first = once()
    return y, first, [once()[1] for _ in range(repeat)]


def copy_seconds(offs, dev: str) -> float:
    """Every unit of the DiT copied into the buffers once, nothing computing (the copy floor)."""
    off, pool = offs.offloads["dit"], offs.pool
    sync(dev)
    t0 = time.perf_counter()
    for i, unit in enumerate(off.order):
        pool.release(pool.take(("copy only", i), unit.host))  # a key no slot holds: always copied
    sync(dev)
    return time.perf_counter() - t0


def run_rows(model, precision: str, inputs, args, rows: list) -> torch.Tensor:
    """Resident, then block, then phase offload of `model` (left offloaded: the caller drops it)."""
    from lightx2v.runtime.block_offload import apply_block_offload
    from lightx2v.runtime.context_kv import ContextKVCache

    x, t, ctx = inputs
    dev = args.device
    resident_out, resident_s = None, None
    for mode in ("resident", "block", "phase"):
        row = {"precision": precision, "config": mode}
        offs = None
        if mode != "resident":
            if getattr(model, "block_hooks", None) is not None:
                model.block_hooks.remove()  # the previous granularity's hooks; the weights stay on the host
            gc.collect()
            t0 = time.perf_counter()
            offs = apply_block_offload(_Pipe(model), torch.device(dev), mode, args.buffers)
            row["setup_s"] = time.perf_counter() - t0
            row["buffers_gib"] = len(offs.pool.slots) * offs.pool.nbytes / 2**30
            row["host_gib"] = offs.offloads["dit"].host_bytes() / 2**30
            row["copy_s"] = copy_seconds(offs, dev)
        if dev == "cuda":
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        model.context_cache = ContextKVCache()
        before = offs.pool.copies if offs else 0
        with torch.no_grad():
            y, first, times = timed(lambda: model(x, t, ctx), args.repeat, dev)
        s = sorted(times)[len(times) // 2]
        row.update(s=s, first_s=first, times=times,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0)
        if offs:
            row["copies_per_forward"] = (offs.pool.copies - before) / (1 + args.repeat)
        y = y.float().cpu()
        if mode == "resident":
            resident_out, resident_s = y, s
        else:
            row["overhead_pct"] = 100 * (s / resident_s - 1)
            row["max_abs_diff"] = float((y - resident_out).abs().max())
        model.context_cache = None
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "times"}),
              flush=True)
    return resident_out


def lazy_row(model, precision: str, inputs, args, rows: list, resident_out) -> None:
    """Block offload with lazy load: the blocks saved to a safetensors file, mapped back (as the loader
    maps a checkpoint) and read by the disk workers (the file is in the page cache after writing)."""
    from safetensors.torch import load_file, save_file

    from lightx2v.runtime.block_offload import apply_block_offload, repeated_blocks
    from lightx2v.runtime.context_kv import ContextKVCache

    x, t, ctx = inputs
    model.block_hooks.remove()
    path = Path(args.tmp) / "offload_blocks.safetensors"
    params = {f"blocks.{i}.{k}": p for i, b in enumerate(repeated_blocks(model)) for k, p in b.named_parameters()}
    save_file({k: p.data for k, p in params.items()}, str(path))
    mapped = load_file(str(path))
    for k, p in params.items():
        p.data = mapped[k]
    del mapped
    gc.collect()
    row = {"precision": precision, "config": f"block, lazy load ({args.workers} workers)"}
    offs = apply_block_offload(_Pipe(model), torch.device(args.device), "block", args.buffers, lazy_load=True,
                               num_disk_workers=args.workers)
    row["buffers_gib"] = len(offs.pool.slots) * offs.pool.nbytes / 2**30
    row["host_gib"] = len(offs.offloads["dit"].reader.buffers) * offs.pool.nbytes / 2**30
    if args.device == "cuda":
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    model.context_cache = ContextKVCache()
    with torch.no_grad():
        y, first, times = timed(lambda: model(x, t, ctx), args.repeat, args.device)
    s = sorted(times)[len(times) // 2]
    resident_s = next(r["s"] for r in rows if r["precision"] == precision and r["config"] == "resident")
    row.update(s=s, first_s=first, times=times, overhead_pct=100 * (s / resident_s - 1),
               peak_gib=torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0,
               max_abs_diff=float((y.float().cpu() - resident_out).abs().max()))
    model.context_cache = None
    rows.append(row)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "times"}), flush=True)
    offs.offloads["dit"].reader.close()


def diffusers_rows(args, inputs, rows: list) -> None:
    """diffusers' WanTransformer3DModel on the same random weights: resident, then its block-level group
    offloading with streams (`enable_group_offload(block_level, num_blocks_per_group=1, use_stream=True)`),
    the same run, the same inputs: the peer's figure beside ours."""
    dim, ffn, heads, layers, _, _ = SHAPES[args.shape]
    cfg, ours = dit_step.build_ours(dim, ffn, heads, layers)
    model = dit_step.build_diffusers(cfg, ours)
    del ours
    gc.collect()
    x, t, ctx = inputs
    dev = args.device
    resident_s = None
    for mode in ("diffusers resident", "diffusers group offload (block, stream)"):
        row = {"precision": "bf16", "config": mode}
        if mode != "diffusers resident":
            model.to("cpu")
            model.enable_group_offload(onload_device=torch.device(dev), offload_device=torch.device("cpu"),
                                       offload_type="block_level", num_blocks_per_group=1,
                                       use_stream=dev == "cuda")
        if dev == "cuda":
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            _, first, times = timed(lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=ctx,
                                                  return_dict=False)[0], args.repeat, dev)
        s = sorted(times)[len(times) // 2]
        row.update(s=s, first_s=first, times=times,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0)
        if resident_s is None:
            resident_s = s
        else:
            row["overhead_pct"] = 100 * (s / resident_s - 1)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "times"}),
              flush=True)
    model = None  # free it before the caller's next model
    gc.collect()


def build(args, precision: str):
    dim, ffn, heads, layers, _, _ = SHAPES[args.shape]
    _, model = dit_step.build_ours(dim, ffn, heads, layers)
    if precision == "w8a8-fp8":
        from lightx2v.quant import apply_quant

        apply_quant(model, "w8a8-fp8", compute_dtype=torch.bfloat16)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return model


def table(rows: list) -> str:
    lines = ["| weights | run | s/forward | overhead | peak GiB | GPU buffers GiB | host GiB | copies/forward | "
             "copy-only s | max abs diff |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        f = (lambda k, fmt: format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "")
        lines.append(f"| {r['precision']} | {r['config']} | {f('s', '.3f')} | "
                     f"{f('overhead_pct', '+.1f') + '%' if 'overhead_pct' in r else ''} | {f('peak_gib', '.2f')} | "
                     f"{f('buffers_gib', '.2f')} | {f('host_gib', '.2f')} | {f('copies_per_forward', '.0f')} | "
                     f"{f('copy_s', '.3f')} | "
                     f"{f('max_abs_diff', '.1e')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (a dry run of the script)")
    ap.add_argument("--precisions", default="bf16,w8a8-fp8")
    ap.add_argument("--buffers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--lazy", action="store_true", help="also a bf16 row with lazy load (writes the blocks to --tmp)")
    ap.add_argument("--workers", type=int, default=2, help="--lazy: disk workers")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--no-diffusers", dest="diffusers", action="store_false",
                    help="skip diffusers' resident and group-offloaded rows (same run, same weights)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    args.shape = "tiny" if args.tiny else "14B-480p"
    dit_step.DEV = args.device
    _, _, _, _, (height, width), frames = SHAPES[args.shape]
    g = torch.Generator(args.device).manual_seed(1)
    lat = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    x = torch.randn(lat, device=args.device, generator=g).to(torch.bfloat16)
    ctx = (torch.randn(1, 512, 4096, device=args.device, generator=g) * 0.2)
    ctx[:, 100:] = 0  # a 100-token prompt, zero-padded
    inputs = (x, torch.tensor([757.0], device=args.device), ctx.to(torch.bfloat16))
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "commit": args.commit, "date": time.strftime("%Y-%m-%d"), "shape": args.shape, "buffers": args.buffers,
            "tokens": lat[2] * (lat[3] // 2) * (lat[4] // 2)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []
    for precision in [p for p in args.precisions.split(",") if p]:
        model = build(args, precision)
        try:
            resident_out = run_rows(model, precision, inputs, args, rows)
            if args.lazy and precision == "bf16":
                lazy_row(model, precision, inputs, args, rows, resident_out)
        except Exception as exc:  # one failing precision must not lose the other's rows
            rows.append({"precision": precision, "config": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(rows[-1], flush=True)
        del model
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        (out / "offload.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.diffusers:
        try:
            diffusers_rows(args, inputs, rows)
        except Exception as exc:
            rows.append({"precision": "bf16", "config": "diffusers error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(rows[-1], flush=True)
        (out / "offload.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = table([r for r in rows if "error" not in r])
    (out / "offload.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
