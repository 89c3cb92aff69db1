"""The torch loader: a plain `torch.utils.data.DataLoader` baseline.

Per-sample work in worker processes, the usual way: each item is cropped/flipped (arrays)
or decoded and transformed with PIL (folders) on its own, default-collated into a uint8
batch, pinned when the target is CUDA, copied, and converted to float on the device.

The batch sampler hands the workers (index, crop y, crop x, flip) or (index, image seed)
items taken from the same `EpochPlan` as the device loader, so both loaders produce the
same batches for the same (seed, epoch) on arrays, and resume/sharding behave identically.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .arrays import ArrayDataset
from .device_loader import single_intraop_thread, to_float_batch
from .errors import DatasetError
from .imagefolder import FolderDataset
from .pil_transforms import eval_image, train_image
from .sampling import EpochLoader, EpochPlan, derive_seed, sample_seeds


def default_num_workers() -> int:
    # Leave one core to the training process itself.
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class ArrayItems(Dataset):
    """Items are (index, crop y, crop x, flip) -> (uint8 (H, W, C) crop, label)."""

    def __init__(self, ds: ArrayDataset, pad: int):
        store = ds.images.permute(0, 2, 3, 1)
        self.store = F.pad(store, (0, 0, pad, pad, pad, pad)).contiguous() if pad else store.contiguous()
        self.labels = ds.labels
        self.height, self.width = ds.images.shape[2:]

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, item: tuple[int, int, int, bool]):
        i, oy, ox, flip = item
        img = self.store[i, oy:oy + self.height, ox:ox + self.width]
        if flip:
            img = img.flip(1)
        return img, self.labels[i]


class FolderItems(Dataset):
    """Items are (index, image seed or -1 for evaluation) -> (uint8 (R, R, 3) image, label)."""

    def __init__(self, ds: FolderDataset):
        self.samples, self.resolution = ds.samples, ds.resolution

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        i, image_seed = item
        path, label = self.samples[i]
        pixels = eval_image(path, self.resolution) if image_seed < 0 else train_image(path, self.resolution, image_seed)
        return torch.from_numpy(pixels.copy()), label


class PlanBatchSampler(Sampler):
    """Yields the batches of the owning loader's current epoch, from its start batch on."""

    def __init__(self, loader: "TorchLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader) - self.loader._active_start

    def __iter__(self):
        plan, start = self.loader._active_plan, self.loader._active_start
        idx = plan.indices.tolist()
        if plan.offset_y is not None:
            extra = list(zip(plan.offset_y.tolist(), plan.offset_x.tolist(), plan.flip.tolist()))
            items = [(i, *e) for i, e in zip(idx, extra)]
        elif self.loader.folder:
            seeds = sample_seeds(len(idx), seed=self.loader.seed, epoch=self.loader.epoch, rank=self.loader.rank).tolist() \
                if self.loader.train else [-1] * len(idx)
            items = list(zip(idx, seeds))
        else:
            items = [(i, 0, 0, False) for i in idx]
        for b in range(start, plan.num_batches):
            yield items[plan.batch_slice(b)]


def _one_line(exc: DatasetError) -> DatasetError:
    """DataLoader re-raises worker errors with the worker's traceback appended; keep the message."""
    text = str(exc)
    marker = "DatasetError: "
    return DatasetError(text[text.rindex(marker) + len(marker):].strip().splitlines()[0] if marker in text else text.splitlines()[0])


class TorchLoader(EpochLoader):
    kind = "torch"

    def __init__(self, ds: ArrayDataset | FolderDataset, batch_size: int, *, train: bool, device="cpu", seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, num_workers: int | None = None,
                 rank: int = 0, world_size: int = 1):
        super().__init__(ds, batch_size, train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.folder = isinstance(ds, FolderDataset)
        self.pad = 0 if self.folder or not train else ds.pad
        self.flip = False if self.folder or not train else ds.flip
        self._active_plan: EpochPlan | None = None
        self._active_start = 0
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        items = FolderItems(ds) if self.folder else ArrayItems(ds, self.pad)
        pin = self.device.type == "cuda"
        self.loader = DataLoader(items, batch_sampler=PlanBatchSampler(self), num_workers=self.num_workers,
                                 pin_memory=pin, persistent_workers=self.num_workers > 0,
                                 # DataLoader draws a worker base seed per iteration; from its own
                                 # generator rather than the global torch RNG (the items carry all randomness).
                                 generator=torch.Generator().manual_seed(derive_seed("workers", self.seed, rank)))

    def __iter__(self) -> Iterator[tuple]:
        # The sampler reads the plan when the DataLoader starts iterating, i.e. right here.
        self._active_plan, self._active_start = self.plan(), self._start_batch
        self._start_batch = 0
        return self._batches(iter(self.loader))

    def _batches(self, it) -> Iterator[tuple]:
        non_blocking = self.device.type == "cuda"
        plan, b = self._active_plan, self._active_start  # the sampler yields the plan's batches in order
        while True:
            try:
                images, labels = next(it)
            except StopIteration:
                return
            except DatasetError as exc:
                raise _one_line(exc) from None
            images = images.to(self.device, non_blocking=non_blocking)
            labels = torch.as_tensor(labels).to(self.device, non_blocking=non_blocking)
            with single_intraop_thread(self.device.type == "cpu"):  # same conversion cost as the device loader
                x = to_float_batch(images, self.channels_last)
            if self.yield_index:
                yield x, labels, plan.sample_index(b, dataset_size=len(self.dataset), pad=self.pad, device=self.device,
                                                   resized=self.folder and self.train)
            else:
                yield x, labels
            b += 1
