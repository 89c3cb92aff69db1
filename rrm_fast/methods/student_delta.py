"""The student-side perturbation of RRM's variant: THIS PROJECT'S, beyond the paper.

The paper's RRM student sees clean inputs only; measured honestly (CE and margin attacks) it
keeps 0.62 (the demo's 59k-image teacher) to 0.80 (a weaker 10k teacher) of its teacher's robust
accuracy, a ratio that more epochs or another loss scale do not lift, and noise on the teacher's
side changes nothing (docs/transfer.md). What transfers the rest is a
perturbation adversarial for the STUDENT, and one can be had for free: the training backward
already computes dL/dx when the input requires grad (only the first layer's input gradient is
extra). ``PerImageDelta`` keeps one L-inf perturbation per training image across epochs (as
ATTA does, Zheng et al., CVPR 2020) and moves it by one signed step per visit:

    x_in  = clip(x + delta_i, 0, 1)                         the student (and teacher) input
    delta_i <- clip(delta_i + step * eps * sign(dL/dx_in), -eps, eps), x + delta_i kept in [0, 1]

with the step done by the fused ``rrm_fast.ops.linf_step_``, started from U(-eps, eps) (or 0).

Storage. The bank is int8 levels of eps/127 (the uniform grid of the eps-ball, 127 levels a
side) and the level IS the canonical value: a batch's delta is its levels times eps/127, the
updated delta is rounded back to levels, so what a resumed run reads is bit for bit what the
uninterrupted run used. int8 rather than bf16: half the bytes (Fashion-MNIST's 59k images:
46 MB, CIFAR-10: 154 MB, in memory and in each training state), a uniform grid over the ball
where bf16's would be finest near 0, and the +-eps step and the +-eps clip are exact (+-127).

Augmentation. The delta lives in the image's own frame. Each visit maps it through the
batch's crop and flip (the loaders hand the method each sample's crop offsets and flip bit,
data.SampleIndex) and maps the stepped delta back; pixels the crop left out keep their
value. Folder data (random-resized crops) cannot be mapped back: RRM refuses the combination.

DDP. Every rank keeps the whole bank, indexed by the global sample index: rank 0's initial
bank is broadcast (the other ranks never draw from their RNG for it), each step's updates
are all-gathered and applied in rank order, so the banks stay identical and only rank 0's
goes into a training state.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import ops

LEVELS = 127  # int8 levels a side of the eps-ball
log = logging.getLogger("rrm_fast.train")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _crop_grid(info, height: int, width: int):
    """(batch, rows, cols) index tensors picking each sample's view out of its padded frame."""
    dev = info.index.device
    b = torch.arange(info.index.numel(), device=dev)[:, None, None]
    r = torch.arange(height, device=dev)
    c = torch.arange(width, device=dev)
    rows = (info.offset_y[:, None] + r)[:, :, None]
    cols = info.offset_x[:, None] + torch.where(info.flip[:, None], width - 1 - c, c)
    return b, rows, cols[:, None, :]


def to_view(delta, info):
    """delta (B, C, H, W) in the images' own frame -> the frame the loader's crop and flip gave x."""
    if not info.augmented:
        return delta
    p, (h, w) = info.pad, delta.shape[2:]
    b, rows, cols = _crop_grid(info, h, w)
    return F.pad(delta, (p, p, p, p))[b, :, rows, cols].permute(0, 3, 1, 2)


def from_view(view, delta, info):
    """The inverse of ``to_view`` on the pixels the crop showed; the others keep ``delta``'s value."""
    if not info.augmented:
        return view
    p, (h, w) = info.pad, delta.shape[2:]
    b, rows, cols = _crop_grid(info, h, w)
    padded = F.pad(delta, (p, p, p, p))
    padded[b, :, rows, cols] = view.permute(0, 2, 3, 1).to(padded.dtype)
    return padded[:, :, p:p + h, p:p + w]


class PerImageDelta:
    """One int8 L-inf delta per training image (see the module docstring). ``perturb(x, info)``
    returns the input to train on (a leaf that requires grad); ``step()`` after the backward
    moves the batch's deltas along that input's gradient and stores them."""

    def __init__(self, eps: float, step: float, init: str):
        self.eps, self.alpha, self.init = float(eps), float(step) * float(eps), init
        self.scale = self.eps / LEVELS
        self.levels: torch.Tensor | None = None  # (N, H, W, C) int8: channels last, as the loaders lay x out
        self._synced = False
        self._batch = None

    # ------------------------------------------------------------------ the bank
    def _allocate(self, info, shape, device) -> None:
        c, h, w = shape
        n = info.dataset_size
        rank0 = not _distributed() or dist.get_rank() == 0
        if self.init == "uniform" and rank0:  # other ranks receive rank 0's draw below
            self.levels = torch.randint(-LEVELS, LEVELS + 1, (n, h, w, c), device=device, dtype=torch.int8)
        else:
            self.levels = torch.zeros((n, h, w, c), device=device, dtype=torch.int8)
        if rank0:
            log.info("student delta: one per training image, %d x %dx%dx%d int8 levels of eps/%d (%.0f MB)", n, c, h, w,
                     LEVELS, self.levels.numel() / 2**20)

    def _sync_from_rank0(self) -> None:
        if _distributed():
            dist.broadcast(self.levels, src=0)
        self._synced = True

    def _check(self, x, info) -> None:
        if info is None:
            raise ValueError("--student-delta per_image needs each sample's index: train through rrm_fast.train's "
                             "loaders, or pass loss(x, y, index=SampleIndex(...))")
        if info.resized:
            raise ValueError("--student-delta per_image cannot follow random-resized crops (folder datasets); pass "
                             "--student-delta none or uniform")
        n, h, w, c = self.levels.shape
        if info.dataset_size != n or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"the per-image delta bank holds {n} images of {c}x{h}x{w}; this batch comes from "
                             f"{info.dataset_size} of {tuple(x.shape[1:])} (resume with the same data)")

    # ------------------------------------------------------------------ one step
    def perturb(self, x, info):
        if info is not None and self.levels is None:
            self._allocate(info, x.shape[1:], x.device)
        self._check(x, info)
        if not self._synced:
            self._sync_from_rank0()
        levels = self.levels[info.index]                               # (B, H, W, C)
        delta = levels.permute(0, 3, 1, 2).float().mul_(self.scale)      # NCHW view, channels-last strides
        x_in = (x + to_view(delta, info)).clamp_(0.0, 1.0).requires_grad_(True)
        self._batch = (x, x_in, info, delta)
        return x_in

    @torch.no_grad()
    def step(self) -> None:
        x, x_in, info, old = self._batch
        self._batch = None
        grad = x_in.grad
        moved = x_in.detach() - x                                        # the delta the step used, in x's frame
        if grad is not None:  # non-finite input gradients (an fp16 overflow) move nothing
            ops.linf_step_(moved, torch.nan_to_num(grad, nan=0.0), x, self.eps, self.alpha, 0.0, 1.0)
        new = from_view(moved, old, info).div_(self.scale).round_().clamp_(-LEVELS, LEVELS)
        self._store(info.index, new.permute(0, 2, 3, 1).to(torch.int8))

    def _store(self, index, levels) -> None:
        if not _distributed():
            self.levels[index] = levels
            return
        world = dist.get_world_size()
        indices = [torch.empty_like(index) for _ in range(world)]
        blocks = [torch.empty_like(levels) for _ in range(world)]
        dist.all_gather(indices, index)
        dist.all_gather(blocks, levels)
        for i, block in zip(indices, blocks):  # rank order: a sample two ranks share (DDP padding) ends alike
            self.levels[i] = block

    # ------------------------------------------------------------------ training state
    def state_dict(self) -> dict:
        if self.levels is None or (_distributed() and dist.get_rank() != 0):
            return {}  # every rank's bank is rank 0's
        return {"levels": self.levels}

    def load_state_dict(self, state: dict) -> None:
        # ranks > 0 saved nothing: they allocate zeros at the first batch and receive rank 0's bank
        self.levels = state["levels"].to(torch.int8).contiguous() if "levels" in state else None
        self._synced = False
