"""A whole generation on an emulated small GPU: the memory planner's plan under a capped allocator.

Writes the Wan2.1-I2V-14B (then -T2V-14B) official layout with random weights (benchmarks/e2e.py's
writer, to /dev/shm: RAM, so that writing 45 GB does not eat the device time), then runs each case in a fresh process: `torch.cuda.set_per_process_memory_fraction`
caps what torch may allocate to the case's budget (an 8 GB card emulated on the H200), the public
API loads with `max_vram=` (and `max_ram=`) so the planner picks the savers, and `generate` makes a
4-step video to an mp4. Per case: the plan line, success or the one-line error, peak GPU memory
(max_memory_allocated), host peak RSS, load and stage seconds. Rows go to $OUT/small_gpu.json and a
markdown table to $OUT/small_gpu.md (pasted into docs/benchmarks.md with device, date, commit).

Cases (the low-memory issue's targets): I2V-14B 480P in 6 GiB (bf16) and in 4 GiB (w8a8-fp8
weights), I2V-14B 480P with lazy loading under a 16 GiB host budget, T2V-14B 720P in 8 GiB (bf16).

    python benchmarks/small_gpu.py --out $OUT --commit <sha>
    python benchmarks/small_gpu.py --device cpu --size tiny --out /tmp/sg    # a dry run (no cap, no plan)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name: (task, height, width, max_vram, max_ram, quant); grouped by task (one checkpoint each)
    "i2v_480p_bf16_6GiB": ("i2v", 480, 832, "6GiB", None, None),
    "i2v_480p_bf16_6GiB_ram16GiB_lazy": ("i2v", 480, 832, "6GiB", "16GiB", None),
    "i2v_480p_fp8_4GiB": ("i2v", 480, 832, "4GiB", None, "w8a8-fp8"),
    "t2v_720p_bf16_8GiB": ("t2v", 720, 1280, "8GiB", None, None),
}


def child(args) -> dict:
    """One case in this process (the parent runs each in a fresh one)."""
    import torch

    from lightx2v import LightX2V
    from lightx2v.runtime.planner import parse_size

    task, h, w, vram, ram, quant = CASES[args.case]
    row: dict = {"case": args.case, "task": task, "height": h, "width": w, "max_vram": vram, "max_ram": ram, "quant": quant}
    # "fp8 weights": the DiT's and the CLIP tower's (the text encoder runs on the CPU in these plans)
    kw: dict = {"quant": quant, "quant_image_encoder": quant if task == "i2v" else None} if quant else {}
    if args.device == "cuda":
        torch.cuda.memory._record_memory_history(max_entries=200000)  # what is alive if it runs out
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(parse_size(vram, "max_vram") / total)
        kw.update(max_vram=vram, max_ram=ram)
    else:  # the dry run: the savers by hand (the planner plans GPU memory only)
        kw.update(offload="block", offload_encoders=True, vae_tiling=True, text_encoder_device="cpu")
        h, w = 64, 64
    t0 = time.perf_counter()
    trace = HostTrace()
    try:
        pipe = LightX2V.from_pretrained(args.ckpt, device=args.device, progress=False, **kw)
        row["load_s"] = time.perf_counter() - t0
        row["host_after_load"] = HostTrace.now()
        row["plan"] = next((line for line in pipe.pipeline.engine_log if line.startswith("memory plan")), None)
        out = Path(args.tmp) / f"{args.case}.mp4"
        image = None
        if task == "i2v":  # a random first frame at the video's size
            from PIL import Image

            image = Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy())
        t_gen = time.perf_counter()
        result = pipe.generate(prompt="a red panda drinking tea in a bamboo forest", height=h, width=w, image=image,
                               num_frames=81 if args.size != "tiny" else 9, num_inference_steps=4,
                               guidance_scale=1.0, seed=0, output_path=str(out))
        row["ok"] = True
        row["timings"] = {k: round(v, 3) for k, v in result.timings.items()}
        row["mp4_bytes"] = out.stat().st_size
        row["host_maps_after"] = top_mappings()
        row["host_by_stage"] = trace.peaks([("load", t0, t_gen)] + stage_windows(t_gen, result.timings))
    except Exception as exc:  # a refusal or an out-of-memory is a result of this benchmark
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        if args.device == "cuda":
            row["alive_at_error"] = alive(torch.cuda.memory._snapshot())
    trace.stop()
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    row["host_peak_rss_gib"] = peak_rss_gib()
    return row


class HostTrace:
    """Samples this process's resident memory (anonymous, file-backed, shared: /dev/shm files mapped
    count as shared) every 0.2 s in a thread, so a host peak can be put on a stage."""

    KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self) -> None:
        import threading

        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def now(cls) -> dict:
        vals = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in cls.KEYS:
                vals[key] = round(int(line.split()[1]) / 2**20, 2)
        return vals

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.perf_counter(), self.now()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, windows: list) -> dict:
        """The largest VmRSS sample (with its split) inside each (name, start, end) window."""
        out = {}
        for name, a, b in windows:
            inside = [v for t, v in self.samples if a <= t <= b]
            if inside:
                out[name] = max(inside, key=lambda v: v.get("VmRSS", 0))
        return out


def top_mappings(n: int = 10) -> list:
    """Resident memory per mapped file (anonymous mappings as "[anon]", pinned host memory under the
    driver's device file): where a host peak lives, a checkpoint file's pages or our own buffers."""
    import re

    rss: dict = {}
    name = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(maxsplit=5)
            name = parts[5].strip() if len(parts) == 6 else "[anon]"
        elif line.startswith("Rss:") and name is not None:
            rss[name] = rss.get(name, 0) + int(line.split()[1])
    top = sorted(rss.items(), key=lambda kv: -kv[1])[:n]
    return [{"gib": round(v / 2**20, 2), "map": k[-90:]} for k, v in top]


def stage_windows(start: float, timings: dict) -> list:
    """The generation's stages as time windows, from its start and its sequential stage timings."""
    windows, t = [], start
    for k in ("text_encoder", "image_encoder", "denoise", "vae_decode", "save"):
        if k in timings:
            windows.append((k, t, t + timings[k]))
            t += timings[k]
    return windows


def alive(snapshot: dict, top: int = 14) -> list:
    """The largest allocations alive in a CUDA memory snapshot: MiB and where they were made."""
    rows = []
    for seg in snapshot.get("segments", []):
        for b in seg.get("blocks", []):
            if b.get("state") == "active_allocated" and b.get("size", 0) >= 32 * 2**20:
                frames = [f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in b.get("frames", [])
                          if "lightx2v" in f.get("filename", "") or "/nn/" in f.get("filename", "")][:4]
                rows.append((b["size"] / 2**20, frames))
    rows.sort(key=lambda r: -r[0])
    return [{"mib": round(m, 1), "where": w} for m, w in rows[:top]]


def peak_rss_gib() -> float:
    """This process's peak resident memory: VmHWM (the high-water mark of its own address space since
    exec; ru_maxrss would carry the parent's at the fork, which wrote a 33 GB checkpoint)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def table(rows: list) -> str:
    lines = ["| case | plan | ok | peak GPU GiB | host peak RSS GiB | load s | text / image / denoise / decode / save s |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        t = r.get("timings", {})
        stages = " / ".join(f"{t.get(k, float('nan')):.1f}" for k in ("text_encoder", "image_encoder", "denoise", "vae_decode", "save"))
        plan = (r.get("plan") or "").replace("|", "/")[:160]
        lines.append(f"| {r['case']} | {plan} | {'yes' if r.get('ok') else 'no: ' + r.get('error', '')[:120]} | "
                     f"{r.get('peak_gpu_gib', 0):.2f} | {r.get('host_peak_rss_gib', 0):.1f} | {r.get('load_s', 0):.1f} | "
                     f"{stages} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="14B", choices=("14B", "tiny"))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--ckpt", default="/dev/shm/lx2v_small_gpu")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.case:
        print("ROW " + json.dumps(child(args)), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from e2e import write_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt)
    meta = {"commit": args.commit, "date": time.strftime("%Y-%m-%d"), "size": args.size, "write_s": {}}
    rows = []
    written = None
    for case in [c for c in args.cases.split(",") if c]:
        task = CASES[case][0]
        if task != written:  # the second task rewrites only the DiT (and the CLIP file)
            parts = ("t5", "vae", "dit") if written is None else ("dit",)
            meta["write_s"][task] = write_checkpoint(ckpt, args.size, args.device, task=task, parts=parts)
            written = task
        cmd = [sys.executable, __file__, "--case", case, "--device", args.device, "--size", args.size,
               "--ckpt", str(ckpt), "--tmp", args.tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
        if row is None:
            row = {"case": case, "ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "small_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    md = table(rows)
    (out / "small_gpu.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
