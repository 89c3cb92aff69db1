"""The device loader (airbench style): the whole dataset lives on the device as uint8 and each
batch is one gather + one convert, with no worker processes and no Python loop over samples.

Layout: the images are stored once as (N, H + 2*pad, W + 2*pad, C) - channels last, with the
zero padding of the random crop already applied - plus, when flips are on, a mirrored copy.
An `as_strided` view of that store, (F, N, 2*pad+1, 2*pad+1, H, W, C), holds every crop
window of every image (F = 2 orientations), so a random crop AND flip of a whole batch is a
single advanced-indexing gather with B indices per dimension, copying contiguous W*C runs.
(Indexing each output pixel instead - B*H*W offsets - measured 4x slower on CPU.) The
gathered (B, H, W, C) tensor viewed as NCHW is already channels_last, and the uint8 ->
float32 /255 conversion writes the requested memory format in one pass.
Memory: the padded store, twice when flipping (CIFAR-10: 2 x 240 MB).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .arrays import ArrayDataset
from .sampling import EpochLoader, EpochPlan


def to_float_batch(nhwc_uint8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1], contiguous or channels_last, one pass."""
    b, h, w, c = nhwc_uint8.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=nhwc_uint8.device, memory_format=fmt)
    # Division (not * (1/255)) keeps 255 -> exactly 1.0.
    torch.div(nhwc_uint8.permute(0, 3, 1, 2), 255.0, out=out)
    return out


def crop_windows(images_nhwc: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """View (F, N, 2*pad+1, 2*pad+1, H, W, C) of every crop window of the zero-padded images.

    Built in place (no padded temporary). F = 2 when flipping: index 1 is the mirrored padded
    store, where the window mirrored to offset x sits at offset 2*pad - x.
    """
    n, h, w, c = images_nhwc.shape
    f = 2 if flip else 1
    stores = torch.zeros((f, n, h + 2 * pad, w + 2 * pad, c), dtype=images_nhwc.dtype, device=images_nhwc.device)
    stores[0, :, pad:pad + h, pad:pad + w] = images_nhwc  # zero fill around, like RandomCrop(padding=pad)
    if flip:
        stores[1] = stores[0].flip(2)
    s = stores.stride()
    return stores.as_strided((f, n, 2 * pad + 1, 2 * pad + 1, h, w, c), (s[0], s[1], s[2], s[3], s[2], s[3], s[4]))


def crop_flip_gather(windows: torch.Tensor, idx: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor,
                     flip: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, H, W, C): image idx[i] cropped at (offset_y[i], offset_x[i]) in its padded frame, then
    mirrored where flip[i] - i.e. output pixel (r, c) is padded pixel (oy + r, ox + W-1-c)."""
    if windows.shape[0] == 2:
        return windows[flip.long(), idx, offset_y, torch.where(flip, 2 * pad - offset_x, offset_x)]
    return windows[0][idx, offset_y, offset_x]


@contextlib.contextmanager
def single_intraop_thread(active: bool):
    """Run a CPU batch's gather/convert on one intra-op thread.

    They are ~0.5 MB memory-bound copies: a second OpenMP thread buys little, and when another
    process holds a core the pool's barrier waits for a descheduled thread - measured on the
    shared 2-core machine: 112 ms per CIFAR batch with 2 threads vs 0.5 ms with 1. The
    setting is restored before the training step runs (set_num_threads costs ~0.3 us).
    """
    previous = torch.get_num_threads()
    if not active or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DeviceLoader(EpochLoader):
    """Iterates (x float32 [0,1] NCHW, y int64) batches of an `ArrayDataset` held on ``device``.

    Epoch semantics: the sample order and augmentation of epoch e are pure functions of
    (seed, e, rank) - see sampling.py - so call ``set_epoch(e)`` before each epoch (as with
    DistributedSampler; without it every epoch repeats the same order) and
    ``set_start_batch(k)`` to make the next iteration resume at batch k.
    """

    kind = "device"

    def __init__(self, ds: ArrayDataset, batch_size: int, *, train: bool, device: str | torch.device = "cpu",
                 seed: int = 0, drop_last: bool = False, channels_last: bool = False, rank: int = 0,
                 world_size: int = 1):
        super().__init__(ds, batch_size, train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.pad = ds.pad if train else 0
        self.flip = ds.flip if train else False
        _, _, self.height, self.width = ds.images.shape
        images = ds.images.to(self.device).permute(0, 2, 3, 1)  # NHWC view; no copy when C == 1
        if self.pad or self.flip:
            self.windows, self.store = crop_windows(images, self.pad, self.flip), None
        else:
            self.windows, self.store = None, images.contiguous()
        self.labels = ds.labels.to(self.device)

    def __iter__(self) -> Iterator[tuple]:
        start, self._start_batch = self._start_batch, 0
        return self._batches(self.plan(), start)

    def _batches(self, plan: EpochPlan, start: int) -> Iterator[tuple]:
        # One host->device copy of the epoch's indices and draws; batches are then slices of them.
        idx_all = plan.indices.to(self.device)
        augment = plan.offset_y is not None
        if augment:
            oy_all, ox_all, fl_all = (t.to(self.device) for t in (plan.offset_y, plan.offset_x, plan.flip))
        on_cpu = self.device.type == "cpu"
        for b in range(start, plan.num_batches):
            sl = plan.batch_slice(b)
            with single_intraop_thread(on_cpu):
                idx = idx_all[sl]
                if augment:
                    raw = crop_flip_gather(self.windows, idx, oy_all[sl], ox_all[sl], fl_all[sl], self.pad)
                else:
                    raw = self.store.index_select(0, idx)
                batch = to_float_batch(raw, self.channels_last), self.labels.index_select(0, idx)
            if self.yield_index:
                batch += (plan.sample_index(b, dataset_size=len(self.dataset), pad=self.pad, device=self.device),)
            yield batch
