"""Multi-process data-parallel training under torchrun (NCCL on GPUs, gloo on CPUs).

    torchrun --nproc_per_node=4 -m rrm_fast.train --method pgd_at --batch-size 512 ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_from_env``
reads them once per process. ``--batch-size`` is the GLOBAL batch: each rank takes
batch_size / world_size samples of every global batch (the loaders shard the epoch order
rank::world_size), and gradients are averaged, so a step sees the same samples and the same
mean gradient as a one-process step (up to float summation order).

Gradients are averaged by torch's DistributedDataParallel, which wraps the student for the
training forward and backward only (rrm_fast.train builds it; methods call it as
``Method.train_model``). Attack and input-gradient passes (PGD, FGSM, TRADES' KL attack,
KDIGA's teacher gradient) run on the unwrapped module: their backward computes input
gradients only, which DDP's reducer would wait for in vain. This module holds the process
group and the small collectives the trainer needs besides (stop flags, epoch sums, states).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    control_group: Any = None  # gloo group for small CPU-side agreements (stop flags, object gathers)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT: DistContext | None = None


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def resolve_rank_device(name: str | None, local_rank: int) -> torch.device:
    """Each rank's device: its own GPU (cuda:LOCAL_RANK) when CUDA is used, else the CPU."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if dev.index is None:
            return torch.device(f"cuda:{local_rank}")
        raise ValueError(f"--device {name} pins every rank to one GPU; under torchrun pass --device cuda "
                         "(each rank uses cuda:LOCAL_RANK) or set CUDA_VISIBLE_DEVICES")
    return dev


def init_from_env(device_name: str | None) -> tuple[DistContext, torch.device | None]:
    """The process group for this process (created once, reused by nested runs such as a
    teacher trained on the fly). Returns (context, device) - device is None when not distributed."""
    global _CONTEXT
    world = env_world_size()
    if world <= 1:
        return DistContext(), None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_rank_device(device_name, local_rank)
    if _CONTEXT is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        _CONTEXT = DistContext(rank, world, local_rank, backend, control)
    elif (device.type == "cuda") != (_CONTEXT.backend == "nccl"):
        raise ValueError(f"--device {device_name} differs from the device type this process group was created for")
    return _CONTEXT, device


def shutdown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


# --------------------------------------------------------------------------- collectives
def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier(group=ctx.control_group)


def all_reduce_sum_(ctx: DistContext, tensors: list[torch.Tensor]) -> None:
    """In-place SUM over ranks of same-dtype, same-device tensors, as one flat all-reduce."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True when ``flag`` is set on any rank (a CPU round trip over the gloo control group,
    no device sync)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return bool(t.item())


def min_over_ranks(ctx: DistContext, value: int) -> int:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ctx.control_group)
    return int(t.item())


def gather_to_main(ctx: DistContext, obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere). Pickled between our own
    processes only - never read from a file."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=ctx.control_group)
    return out


def broadcast_from_main(ctx: DistContext, obj):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.control_group)
    return box[0]


def broadcast_buffers_(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, before every evaluation: each
    rank's running statistics saw only its own samples."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


__all__ = ["DistContext", "all_reduce_sum_", "any_rank", "barrier", "broadcast_from_main", "broadcast_buffers_",
           "gather_to_main", "init_from_env", "min_over_ranks", "shutdown"]
