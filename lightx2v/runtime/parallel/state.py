"""The ranks of one launch and their groups: `ParallelState` (explicit, frozen; no module globals).

Layout (xDiT's and LightX2V's order: the sequence-parallel group innermost, Ulysses inside ring):

    rank = cfg_rank * (ulysses * ring) + sp_rank,   sp_rank = ring_rank * ulysses + ulysses_rank

so with cfg_parallel x ulysses 4 on 8 GPUs ranks 0-3 run the conditional branch (one Ulysses group),
4-7 the unconditional one; the CFG groups are {0, 4}, {1, 5}, ... (same place in the sequence, the two
branches). A Ulysses group is `ulysses` consecutive ranks (the all-to-all, the most traffic, between
neighbours: NVLink on one node); a ring group takes one rank of each Ulysses group of a CFG branch.

The process group comes from the torchrun environment (`torch.distributed.init_process_group` with
`env://`: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; LOCAL_RANK picks the GPU). NCCL on CUDA with
NVLink multicast off (NCCL_NVLS_ENABLE=0 unless the user set it: we never turn it on), gloo on the CPU.
`environment()` is the one place that reads those variables (torchrun's contract is its environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lightx2v.errors import InputError


def environment() -> tuple[int, int, int]:
    """(world size, rank, local rank) of a torchrun launch, or (1, 0, 0) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return dist.get_world_size(), dist.get_rank(), local
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return 1, 0, 0
    return int(world), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def check_world(cfg, world: Optional[int] = None) -> None:
    """cfg (a ParallelConfig) against the launch: the product of its degrees is the world size (with
    vae_parallel alone, 1: every rank would run the whole denoise)."""
    world = environment()[0] if world is None else world
    if not cfg.enabled:
        return
    if cfg.world > 1 and world == 1 and "WORLD_SIZE" not in os.environ:
        raise InputError(f"parallel degrees cfg {cfg.cfg} x ulysses {cfg.ulysses} x ring {cfg.ring} = {cfg.world} "
                         f"need {cfg.world} processes: launch with torchrun --nproc-per-node {cfg.world} -m lightx2v "
                         "generate ... (WORLD_SIZE is not set)", field="parallel")
    if cfg.world != world:
        raise InputError(f"parallel degrees cfg {cfg.cfg} x ulysses {cfg.ulysses} x ring {cfg.ring} = {cfg.world}, "
                         f"but the launch has {world} processes (WORLD_SIZE); they must be equal", field="parallel")


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a CUDA engine, the CPU as it is."""
    if device.type != "cuda":
        return device
    local = environment()[2]
    if local >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()} "
                         "(--nproc-per-node must not exceed the GPUs per node)", field="device")
    return torch.device("cuda", local)


def ensure_process_group(device: torch.device) -> None:
    """The default process group, initialised from the torchrun environment if it is not yet
    (NCCL on CUDA with NCCL_NVLS_ENABLE=0 unless set, gloo on the CPU)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        raise InputError("a parallel run needs torchrun (or torch.distributed initialised); WORLD_SIZE is not set",
                         field="parallel")
    if device.type == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (NVLS)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


@dataclass(frozen=True)
class ParallelState:
    """This rank's place in the launch and its groups (None where a degree is 1).

    cfg_group: the 2 ranks of one place in the sequence running the two CFG branches (rank 0 of
    it: cond); sp_group: the ulysses x ring ranks sharing one branch's tokens; ulysses_group /
    ring_group: its parts; world_group: every rank (the parallel VAE decode, the seed)."""

    world: int
    rank: int
    device: torch.device
    cfg: int
    ulysses: int
    ring: int
    vae_parallel: bool = False
    cfg_group: Any = None
    sp_group: Any = None
    ulysses_group: Any = None
    ring_group: Any = None
    world_group: Any = None

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def ulysses_rank(self) -> int:
        return self.sp_rank % self.ulysses

    @property
    def ring_rank(self) -> int:
        return self.sp_rank // self.ulysses

    @property
    def writes_output(self) -> bool:
        """Only rank 0 decodes to a file (the others return their latents, no path)."""
        return self.rank == 0

    def describe(self) -> str:
        parts = [f"{n} {d}" for n, d in (("cfg", self.cfg), ("ulysses", self.ulysses), ("ring", self.ring)) if d > 1]
        if self.vae_parallel:
            parts.append("vae_parallel")
        return f"rank {self.rank} of {self.world} on {self.device}: {', '.join(parts) or 'one rank'}"

    def agree_seed(self, seed: int) -> int:
        """Rank 0's seed on every rank (a random seed is drawn per process; the noise must be the same)."""
        if self.world == 1:
            return seed
        import torch.distributed as dist

        box = [seed]
        dist.broadcast_object_list(box, src=0, group=self.world_group, device=self.device)
        return int(box[0])


def rank_groups(cfg: int, ulysses: int, ring: int) -> dict[str, list[list[int]]]:
    """Every group of each kind, as rank lists (the layout of the module docstring)."""
    sp = ulysses * ring
    at = (lambda c, r, u: c * sp + r * ulysses + u)
    return {
        "cfg": [[c * sp + s for c in range(cfg)] for s in range(sp)],
        "sp": [[c * sp + s for s in range(sp)] for c in range(cfg)],
        "ulysses": [[at(c, r, u) for u in range(ulysses)] for c in range(cfg) for r in range(ring)],
        "ring": [[at(c, r, u) for r in range(ring)] for c in range(cfg) for u in range(ulysses)],
    }


def init_parallel(cfg, device: torch.device) -> ParallelState:
    """This rank's ParallelState for `cfg` (a ParallelConfig): the process group (from torchrun's
    environment if needed) and the subgroups, made on every rank in the same order (new_group is
    collective)."""
    import torch.distributed as dist

    ensure_process_group(device)
    world, rank = dist.get_world_size(), dist.get_rank()
    check_world(cfg, world)
    mine: dict[str, Any] = {}
    for kind, lists in rank_groups(cfg.cfg, cfg.ulysses, cfg.ring).items():
        for ranks in lists:
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                mine[kind] = group
    return ParallelState(world=world, rank=rank, device=device, cfg=cfg.cfg, ulysses=cfg.ulysses, ring=cfg.ring,
                         vae_parallel=cfg.vae_parallel, cfg_group=mine["cfg"], sp_group=mine["sp"],
                         ulysses_group=mine["ulysses"], ring_group=mine["ring"], world_group=dist.group.WORLD)
