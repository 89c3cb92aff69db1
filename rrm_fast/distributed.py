"""Multi-process data-parallel training under torchrun (NCCL on GPUs, gloo on CPUs).

    torchrun --nproc_per_node=4 -m rrm_fast.train --method pgd_at --batch-size 512 ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_from_env``
reads them once per process. ``--batch-size`` is the GLOBAL batch: each rank takes
batch_size / world_size samples of every global batch (the loaders shard the epoch order
rank::world_size), and gradients are averaged, so a step sees the same samples and the same
mean gradient as a one-process step (up to float summation order).

Why not torch's DistributedDataParallel wrapper: adversarial methods run forward passes
with autograd on (PGD, FGSM, TRADES' KL attack, KDIGA's input gradient) whose backward
computes input gradients only. DDP's reducer expects every forward with grad to end in a
parameter backward and fails on the next iteration ("Expected to have finished reduction
in the prior iteration"). `GradientAverager` does the part of DDP that matters here -
bucketed all-reduces launched from post-accumulate-grad hooks, so communication overlaps
the backward - and ignores passes that never accumulate parameter gradients.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket size


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


def broadcast_module_(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere (start of training, and buffers such as
    BatchNorm statistics before every evaluation, as DDP's broadcast_buffers would)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def broadcast_buffers_(ctx: DistContext, module: torch.nn.Module) -> None:
    if not ctx.enabled:
        return
    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


# --------------------------------------------------------------------------- gradient averaging
class GradientAverager:
    """Averages parameter gradients over ranks, overlapping communication with the backward.

    Parameters are grouped into ~25 MB buckets in reverse registration order (the order in
    which a backward usually finishes them). A post-accumulate-grad hook counts each
    parameter's gradient in; once every parameter of a bucket has one, the bucket is
    flattened, scaled by 1/world_size and all-reduced asynchronously. Buckets are launched
    strictly in index order so every rank issues the same collectives in the same order.
    ``finish()`` - after backward, before the optimizer step - launches any bucket left
    (parameters that got no gradient contribute zeros and keep ``grad=None`` locally), waits,
    and writes the averages back into ``.grad``.

    Passes that compute only input gradients (``torch.autograd.grad`` in attacks) never
    accumulate parameter gradients, so they trigger nothing.
    """

    def __init__(self, ctx: DistContext, params, bucket_bytes: int = BUCKET_BYTES):
        self.ctx = ctx
        params = [p for p in params if p.requires_grad]
        buckets: list[list[torch.nn.Parameter]] = []
        current: list[torch.nn.Parameter] = []
        size = 0
        for p in reversed(params):
            if current and (size >= bucket_bytes or p.dtype != current[0].dtype or p.device != current[0].device):
                buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            buckets.append(current)
        self.buckets = buckets
        self.bucket_of = {id(p): i for i, b in enumerate(buckets) for p in b}
        self._ready = [0] * len(buckets)
        self._next = 0
        self._inflight: list[tuple[int, torch.Tensor, Any]] = []
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def _on_grad(self, p: torch.Tensor) -> None:
        i = self.bucket_of[id(p)]
        self._ready[i] += 1
        while self._next < len(self.buckets) and self._ready[self._next] == len(self.buckets[self._next]):
            self._launch(self._next)

    def _launch(self, i: int) -> None:
        bucket = self.buckets[i]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        flat.div_(self.ctx.world_size)
        work = dist.all_reduce(flat, async_op=True)
        self._inflight.append((i, flat, work))
        self._next = i + 1

    def finish(self) -> None:
        while self._next < len(self.buckets):
            self._launch(self._next)
        for i, flat, work in self._inflight:
            work.wait()
            offset = 0
            for p in self.buckets[i]:
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        self._inflight.clear()
        self._ready = [0] * len(self.buckets)
        self._next = 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


__all__ = ["DistContext", "GradientAverager", "all_reduce_sum_", "any_rank", "barrier", "broadcast_from_main",
           "broadcast_module_", "broadcast_buffers_", "gather_to_main", "init_from_env", "min_over_ranks", "shutdown"]
