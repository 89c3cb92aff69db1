"""Epoch order, DDP sharding and augmentation parameters: pure functions of (seed, epoch, rank).

Every loader kind takes its sample order and its per-sample crop/flip draws from here, so
for the same arguments they visit the same samples in the same batches with the same
augmentation, and a run resumed at (epoch, batch k) reproduces the uninterrupted run
exactly. Nothing here touches the global torch RNG: each draw uses its own
`torch.Generator` seeded by `derive_seed`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .errors import DatasetError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings; distinct tuples give unrelated streams.

    Hashing (rather than seed * K + epoch) keeps (seed=0, epoch=1) and (seed=1, epoch=0) apart.
    """
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """int64 (n,) visiting order of one epoch: a seeded permutation, or 0..n-1 without shuffle."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    gen = torch.Generator().manual_seed(derive_seed("order", seed, epoch))
    return torch.randperm(n, generator=gen)


def shard_size(n: int, *, rank: int, world_size: int, even: bool, drop_last: bool) -> int:
    if world_size == 1:
        return n
    if even:
        return n // world_size if drop_last else math.ceil(n / world_size)
    return len(range(rank, n, world_size))


def shard(order: torch.Tensor, *, rank: int, world_size: int, even: bool, drop_last: bool) -> torch.Tensor:
    """This rank's part of an epoch order.

    even=True (training under DDP): every rank gets the same number of samples, as
    DistributedSampler does - the order is truncated to a multiple of world_size with
    drop_last, else padded by wrapping around to its start. even=False (evaluation): a strict
    partition order[rank::world_size], every sample counted exactly once across ranks.
    """
    if world_size == 1:
        return order
    n = order.numel()
    if even:
        per_rank = shard_size(n, rank=rank, world_size=world_size, even=True, drop_last=drop_last)
        total = per_rank * world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))
        order = order[:total]
    return order[rank::world_size]


@dataclass
class EpochPlan:
    """One rank's epoch: sample indices in visiting order and, when augmenting, one crop offset
    pair in [0, 2*pad] and one flip bit per position."""

    indices: torch.Tensor
    batch_size: int
    num_batches: int
    offset_y: torch.Tensor | None = None
    offset_x: torch.Tensor | None = None
    flip: torch.Tensor | None = None

    def batch_slice(self, b: int) -> slice:
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, self.indices.numel()))

    def sample_index(self, b: int, *, dataset_size: int, pad: int, device, resized: bool = False) -> "SampleIndex":
        """Batch ``b``'s samples: their dataset indices and augmentation draws, on ``device``."""
        sl = self.batch_slice(b)
        draws = [None if t is None else t[sl].to(device) for t in (self.offset_y, self.offset_x, self.flip)]
        return SampleIndex(self.indices[sl].to(device), dataset_size, pad, *draws, resized=resized)


@dataclass
class SampleIndex:
    """Which dataset samples a training batch holds and how each was augmented, for a method
    that keeps per-sample state (``Method.needs_sample_index``; RRM's per-image delta).

    ``index``: (B,) int64 positions in the loader's dataset (under DDP: in the whole training
    set, the same numbering on every rank). Array data: sample i of the batch is the image
    zero-padded by ``pad`` pixels, cropped at (offset_y[i], offset_x[i]) and mirrored where
    flip[i] - output pixel (r, c) is padded pixel (oy + r, ox + c), or (oy + r, ox + W-1-c)
    when flipped; the offsets are None without augmentation. ``resized``: folder data, whose
    random-resized crops no per-pixel map inverts."""
    index: torch.Tensor
    dataset_size: int
    pad: int = 0
    offset_y: torch.Tensor | None = None
    offset_x: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    resized: bool = False

    @property
    def augmented(self) -> bool:
        return self.offset_y is not None


def count_batches(n_rank: int, batch_size: int, drop_last: bool) -> int:
    return n_rank // batch_size if drop_last else math.ceil(n_rank / batch_size)


def plan_epoch(
    n: int, batch_size: int, *, train: bool, seed: int, epoch: int, rank: int, world_size: int,
    drop_last: bool, pad: int, flip: bool,
) -> EpochPlan:
    indices = shard(epoch_order(n, shuffle=train, seed=seed, epoch=epoch),
                    rank=rank, world_size=world_size, even=train, drop_last=drop_last)
    plan = EpochPlan(indices=indices, batch_size=batch_size,
                     num_batches=count_batches(indices.numel(), batch_size, drop_last))
    if train and (pad > 0 or flip):
        m = indices.numel()
        gen = torch.Generator().manual_seed(derive_seed("augment", seed, epoch, rank))
        plan.offset_y = torch.randint(0, 2 * pad + 1, (m,), generator=gen)
        plan.offset_x = torch.randint(0, 2 * pad + 1, (m,), generator=gen)
        plan.flip = (torch.rand(m, generator=gen) < 0.5) if flip else torch.zeros(m, dtype=torch.bool)
    return plan


def check_loader_args(n: int, batch_size: int, *, train: bool, drop_last: bool, rank: int, world_size: int) -> int:
    """Validate the common loader arguments; return the number of batches per epoch on this rank."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise DatasetError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if n == 0:
        raise DatasetError("the dataset is empty; check the data folder and split")
    n_rank = shard_size(n, rank=rank, world_size=world_size, even=train, drop_last=drop_last)
    batches = count_batches(n_rank, batch_size, drop_last)
    if batches == 0:
        raise DatasetError(
            f"drop_last with batch_size={batch_size} leaves no batch from {n_rank} samples on this rank; "
            "lower the batch size or pass drop_last=False"
        )
    return batches


class EpochLoader:
    """What every loader kind shares: its arguments, the epoch/start-batch state, and the epoch plan.

    A subclass calls ``super().__init__`` and then sets ``pad`` and ``flip`` (which depend on
    its kind and dataset) before ``plan()`` is used.
    """

    pad: int
    flip: bool

    def __init__(self, ds, batch_size: int, *, train: bool, seed: int, drop_last: bool, rank: int, world_size: int):
        self._num_batches = check_loader_args(len(ds), batch_size, train=train, drop_last=drop_last,
                                              rank=rank, world_size=world_size)
        self.dataset, self.batch_size, self.train = ds, batch_size, train
        self.seed, self.drop_last = int(seed), drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self._start_batch = 0, 0
        self.yield_index = False

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start_batch(self, batch: int) -> None:
        if not 0 <= batch <= self._num_batches:
            raise ValueError(f"start batch must be in [0, {self._num_batches}], got {batch}")
        self._start_batch = int(batch)

    def set_yield_index(self, flag: bool) -> None:
        """With True, batches are (x, y, SampleIndex) instead of (x, y): asked by the trainer
        for a method that declares ``needs_sample_index``."""
        self.yield_index = bool(flag)

    def plan(self) -> EpochPlan:
        return plan_epoch(len(self.dataset), self.batch_size, train=self.train, seed=self.seed, epoch=self.epoch,
                          rank=self.rank, world_size=self.world_size, drop_last=self.drop_last,
                          pad=self.pad, flip=self.flip)


def sample_seeds(m: int, *, seed: int, epoch: int, rank: int) -> torch.Tensor:
    """One 62-bit seed per position of a rank's epoch, for per-image augmentation whose
    parameters depend on the decoded image size (random-resized crop of folder images)."""
    gen = torch.Generator().manual_seed(derive_seed("image-augment", seed, epoch, rank))
    return torch.randint(0, 1 << 62, (m,), generator=gen)
