"""Several GPUs: one denoising step of Wan2.1-T2V-14B / I2V-14B (480P, 81 frames, random bf16 weights)
on 1 GPU and on 2, CFG parallel, Ulysses 2 and ring 2, and the VAE decode on 1 and 2 GPUs. One launch:

    torchrun --nproc-per-node 2 benchmarks/parallel.py --out $OUT --commit <sha>
    torchrun --nproc-per-node 2 benchmarks/parallel.py --dry-run --out /tmp/p   # the logic, CPU + gloo, tiny

Each rank builds the same DiT (random weights drawn on its GPU; timing does not depend on them), with
the engine's pieces a run uses: the attention backend ("auto"), cross-attention K/V kept
(context_kv), optionally regional compile (--compile). Rows, per shape:
  1gpu_cfg_step      rank 0 alone (the other waits at a barrier): two forwards (cond, uncond) + the CFG combine
  2gpu_cfg_parallel  both ranks: one forward each + one all-gather of the velocity (Guidance mode "parallel")
  1gpu_step          rank 0 alone: one forward (no CFG: a distilled model's step)
  2gpu_ulysses       both ranks: one forward, tokens split, an all-to-all around each self-attention
  2gpu_ulysses_<variant>  the same under each --exchange variant (packed, packed1: one head stage, legacy: the
                     reference exchange); 2gpu_ulysses is the first; ulysses_equal_<variant>: its output equals
                     the first variant's bit for bit (torch.equal, on the GPU)
  block_a2a          one block's Ulysses all-to-alls alone (no attention: a kernel that returns an empty
                     output), per variant, and the bare all_to_all_single of the same bytes (raw_s, raw_GBps):
                     the communication of a block, apart from its compute
  2gpu_ring          both ranks: one forward, ring 2 (the K/V shards passed round, each block by the ring's
                     own kernel: ring_block_kernel names it, FA3 on Hopper where installed); ring_vs_ulysses_rel_l2:
                     its output against Ulysses 2's (both exact attention: rounding only)
  1gpu_vae / 2gpu_vae  the VAE decode of the 480P x 81 latents (2 GPUs: lightx2v.runtime.parallel.vae, when
                       in the build)
Seconds: median of --repeat after a warm-up, the slowest rank's (CUDA events; barriers between runs).
Also the communication per step of Ulysses (bytes each rank sends: the all-to-alls of q, k, v and
the output of every block, and the final all-gather) and CFG parallel (the all-gather), the inputs of
the 4- and 8-GPU projection in docs/benchmarks.md. Rows go to $OUT/parallel.json (rank 0 writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from random_weights import fill_random_

SHAPES = {  # name: (model_type, in_dim, dim, ffn, heads, layers, (height, width), frames)
    "t2v-14b": ("t2v", 16, 5120, 13824, 40, 40, (480, 832), 81),
    "i2v-14b": ("i2v", 36, 5120, 13824, 40, 40, (480, 832), 81),
    "tiny": ("t2v", 16, 64, 128, 2, 2, (64, 128), 9),  # 128 wide: two VAE pieces of 8 latent columns
    "tiny-i2v": ("i2v", 36, 64, 128, 2, 2, (64, 128), 9),
}


def ulysses_bytes(layers: int, tokens: int, dim: int, n: int, b: int = 2) -> int:
    """Bytes one rank of a Ulysses group of n sends per forward: per block the all-to-alls of q, k, v
    and the attention output ((n - 1) / n of its tokens / n x dim each, `b` bytes an element), then
    its share of the fp32 all-gather of the blocks' output (to n - 1 ranks)."""
    share = math.ceil(tokens / n) * dim
    return layers * 4 * share * b * (n - 1) // n + share * 4 * (n - 1)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = torch.device("cpu") if args.dry_run else torch.device("cuda", local)
        self.dtype = torch.float32 if args.dry_run else torch.bfloat16

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, ranks: int, repeat: int | None = None) -> float:
        """Median seconds of fn over --repeat runs (after one warm-up) on the first `ranks` ranks, the slowest rank's."""
        times = []
        for i in range((repeat or self.args.repeat) + 1):
            dist.barrier()
            if self.rank < ranks:
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                if i:
                    times.append(time.perf_counter() - t0)
        mine = torch.tensor([sorted(times)[len(times) // 2] if times else 0.0], dtype=torch.float64)
        if self.device.type == "cuda":
            mine = mine.to(self.device)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        return float(mine.item())

    def build_dit(self, shape: str):
        from lightx2v.config import CompileConfig
        from lightx2v.models.wan.dit import WanDiTConfig, WanModel
        from lightx2v.ops.attention import resolve_attention, set_attention_backend
        from lightx2v.runtime.context_kv import apply_context_kv
        from lightx2v.runtime.engine import compile_blocks

        mt, in_dim, dim, ffn, heads, layers, _, _ = SHAPES[shape]
        text_dim = 32 if shape.startswith("tiny") else 4096
        cfg = WanDiTConfig(model_type=mt, in_dim=in_dim, dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers,
                           text_dim=text_dim, freq_dim=256 if dim > 64 else 32)
        with torch.device("meta"):
            m = WanModel(cfg)
        m = fill_random_(m.to_empty(device=self.device), self.device)
        for name, p in m.named_parameters():
            if not any(k in name for k in WanModel._keep_in_fp32):
                p.data = p.data.to(self.dtype)
        m = m.eval().requires_grad_(False)
        set_attention_backend(m, resolve_attention("auto", self.device, self.dtype))
        apply_context_kv([("dit", m)])
        if self.args.compile:
            compile_blocks(m, CompileConfig(enabled=True, backend="aot_eager" if self.args.dry_run else "inductor"))
        return cfg, m

    def inputs(self, cfg, shape: str):
        _, _, _, _, _, _, (h, w), frames = SHAPES[shape]
        g = torch.Generator("cpu").manual_seed(0)
        lat = (1, 16, (frames - 1) // 4 + 1, h // 8, w // 8)
        x = torch.randn(lat, generator=g).to(self.device, self.dtype)
        ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(self.device, self.dtype)
        neg = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(self.device, self.dtype)
        clip = y = None
        if cfg.model_type == "i2v":
            clip = torch.randn(1, cfg.clip_tokens, cfg.image_dim, generator=g).to(self.device, self.dtype)
            y = torch.randn(1, cfg.in_dim - 16, *lat[2:], generator=g).to(self.device, self.dtype)
        return x, ctx, neg, clip, y

    def dit_rows(self, shape: str) -> dict:
        from lightx2v.config import ParallelConfig
        from lightx2v.pipelines.base import Guidance, StepContext
        from lightx2v.runtime.parallel import init_parallel
        from lightx2v.runtime.parallel.sequence import apply_sequence_parallel, remove_sequence_parallel

        cfg, m = self.build_dit(shape)
        x, ctx, neg, clip, y = self.inputs(cfg, shape)
        t = torch.tensor([900.0], device=self.device)
        step = StepContext(step=0, num_steps=50, timestep=900.0)

        def model_fn(xx, tt, c, _ctx):
            return m(xx, tt, c, clip_fea=clip, y=y)

        rows = {}
        with torch.no_grad():
            seq = Guidance(scale=5.0)
            rows["1gpu_cfg_step"] = self.timed(lambda: seq(model_fn, x, t, ctx, neg, step), 1)
            rows["1gpu_step"] = self.timed(lambda: model_fn(x, t, ctx, step), 1)
            if self.world >= 2:
                state = init_parallel(ParallelConfig(cfg_parallel=True), self.device)
                par = Guidance(scale=5.0, mode="parallel", group=state.cfg_group)
                rows["2gpu_cfg_parallel"] = self.timed(lambda: par(model_fn, x, t, ctx, neg, step), 2)
                state = init_parallel(ParallelConfig(ulysses=2), self.device)
                apply_sequence_parallel(m, state)
                rows.update(self.ulysses_rows(m, lambda: model_fn(x, t, ctx, step)))
                ulysses_out = model_fn(x, t, ctx, step)
                remove_sequence_parallel(m)
                rows["block_a2a"] = self.a2a_rows(cfg, x, state.ulysses_group)
                # ring 2: the K/V shards round the ring, each block by the ring's own kernel (FA3 on Hopper)
                from lightx2v.runtime.parallel.ring import _auto_kernel

                state = init_parallel(ParallelConfig(ring=2), self.device)
                apply_sequence_parallel(m, state)
                rows["ring_block_kernel"] = _auto_kernel(x.new_empty(1, 8, cfg.num_heads, cfg.dim // cfg.num_heads))
                rows["2gpu_ring"] = self.timed(lambda: model_fn(x, t, ctx, step), 2)
                ring_out = model_fn(x, t, ctx, step)
                rows["ring_vs_ulysses_rel_l2"] = float((ring_out.float() - ulysses_out.float()).norm()
                                                       / ulysses_out.float().norm())
                remove_sequence_parallel(m)
        tokens = math.prod(s // p for s, p in zip(x.shape[2:], cfg.patch_size))
        b = 2  # bf16 bytes
        rows["comm_bytes_per_rank"] = {  # what one rank sends per forward (Ulysses N) / step (CFG parallel)
            **{f"ulysses{n}_forward": ulysses_bytes(cfg.num_layers, tokens, cfg.dim, n, b) for n in (2, 4, 8)},
            "cfg_parallel_step": x.numel() * 4,  # the fp32 velocity, all-gathered
        }
        rows["tokens"] = tokens
        rows["speedup_cfg_parallel"] = rows["1gpu_cfg_step"] / rows.get("2gpu_cfg_parallel", float("nan"))
        rows["speedup_ulysses"] = rows["1gpu_step"] / rows.get("2gpu_ulysses", float("nan"))
        rows["speedup_ring"] = rows["1gpu_step"] / rows.get("2gpu_ring", float("nan"))
        return rows

    def variants(self) -> list[tuple[str, str, int]]:
        """--exchange as (name, exchange, stages): "packed" (2 stages), "packedN" (N stages), "legacy"."""
        out = []
        for name in self.args.exchange.split(","):
            exchange = "legacy" if name == "legacy" else "packed"
            stages = int(name[len("packed"):] or 2) if exchange == "packed" else 1
            out.append((name, exchange, stages))
        return out

    def ulysses_rows(self, m, forward) -> dict:
        """One forward under Ulysses 2 per exchange variant; the first is the headline row."""
        from lightx2v.runtime.parallel.ulysses import set_ulysses_exchange

        rows, first = {}, None
        for i, (name, exchange, stages) in enumerate(self.variants()):
            set_ulysses_exchange(m, exchange, stages)
            rows[f"2gpu_ulysses_{name}"] = self.timed(forward, 2)
            out = forward()
            if i == 0:
                rows["2gpu_ulysses"], first = rows[f"2gpu_ulysses_{name}"], out
            else:
                rows[f"ulysses_equal_{name}"] = bool(torch.equal(out, first))
        set_ulysses_exchange(m, "packed", 2)
        return rows

    def a2a_rows(self, cfg, x, group) -> dict:
        """One block's all-to-alls alone: each variant's exchange around a kernel that computes nothing,
        and the bare all_to_all_single of the bytes a block sends (q, k, v and the output)."""
        import torch.distributed._functional_collectives as fc

        from lightx2v.runtime.parallel.sequence import SequenceParallelAttention, ShardInfo
        from lightx2v.runtime.parallel.ulysses import count_bytes

        tokens = math.prod(s // p for s, p in zip(x.shape[2:], cfg.patch_size))
        n, heads = self.world, cfg.num_heads
        local = math.ceil(tokens / n)
        qkv = torch.randn(1, local, 3 * cfg.dim, device=self.device, dtype=self.dtype)  # as the fused projection
        q, k, v = (t.unflatten(-1, (heads, -1)) for t in qkv.chunk(3, dim=-1))  # [1, Ll, H, D] each, strided
        wrap = SequenceParallelAttention(lambda q_, k_, v_: q_.new_empty(q_.shape), ShardInfo(), ulysses_group=group)
        rows = {}
        for name, exchange, stages in self.variants():
            wrap.exchange, wrap.stages = exchange, stages
            rows[f"{name}_s"] = self.timed(lambda: wrap(q, k, v), 2, repeat=10)
        send = torch.empty(4 * local * cfg.dim, device=self.device, dtype=self.dtype)
        rows["raw_s"] = self.timed(lambda: fc.wait_tensor(fc.all_to_all_single(send, None, None, group)), 2, repeat=10)
        counted = count_bytes(1, local, heads, cfg.dim // heads, n, q.element_size())
        rows["bytes_sent"] = counted["sent"]
        rows["raw_GBps"] = counted["sent"] / rows["raw_s"] / 1e9
        rows["bytes_copied"] = {"legacy": counted["copied_legacy"], "packed": counted["copied_packed"]}
        return rows

    def vae_rows(self, shape: str) -> dict:
        from lightx2v.models.wan.vae import WanVAE, WanVAEConfig, tiny_vae_config

        _, _, _, _, _, _, (h, w), frames = SHAPES[shape]
        with torch.device("meta"):
            vae = WanVAE(tiny_vae_config() if self.args.dry_run else WanVAEConfig())
        vae = fill_random_(vae.to_empty(device=self.device), self.device).eval().requires_grad_(False)
        lat = torch.randn(1, vae.config.z_dim, (frames - 1) // 4 + 1, h // 8, w // 8,
                          generator=torch.Generator("cpu").manual_seed(1)).to(self.device)
        rows = {}
        with torch.no_grad():
            rows["1gpu_vae"] = self.timed(lambda: vae.decode(lat), 1)
            try:
                from lightx2v.runtime.parallel.vae import decode_vae_parallel
            except ImportError:
                rows["2gpu_vae"] = "lightx2v.runtime.parallel.vae is not in this build"
                return rows
            rows["2gpu_vae"] = self.timed(lambda: decode_vae_parallel(vae, lat, dist.group.WORLD), 2)
            rows["speedup_vae"] = rows["1gpu_vae"] / rows["2gpu_vae"]
        return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="t2v-14b,i2v-14b")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="regional torch.compile of the DiT blocks (inductor)")
    ap.add_argument("--no-vae", dest="vae", action="store_false")
    ap.add_argument("--exchange", default="packed,legacy",
                    help="Ulysses exchange variants, the first the headline: packed (2 head stages), packedN, legacy")
    ap.add_argument("--dry-run", action="store_true", help="CPU, gloo, tiny shapes, fp32: checks the logic")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    if args.dry_run:
        args.shapes, args.repeat = "tiny,tiny-i2v", 1
        os.environ.setdefault("TRITON_INTERPRET", "1")
    else:
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast
    bench = Bench(args)
    results = {"world": bench.world, "commit": args.commit, "compile": args.compile,
               "device": "cpu" if args.dry_run else torch.cuda.get_device_name(bench.device), "shapes": {}}
    for shape in args.shapes.split(","):
        rows = bench.dit_rows(shape)
        if args.vae and not shape.endswith("i2v") and not shape.startswith("i2v"):  # one decode: the latents' shape
            rows.update(bench.vae_rows(shape))
        results["shapes"][shape] = rows
        if bench.rank == 0:
            print(shape, json.dumps(rows), flush=True)
    if bench.rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parallel.json").write_text(json.dumps(results, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if not (dist.is_available() and dist.is_initialized()):
        import sys

        dry = "--dry-run" in sys.argv
        if not dry:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("gloo" if dry else "nccl")
    main()
