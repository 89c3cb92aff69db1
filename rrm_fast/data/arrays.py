"""In-memory image classification data: the `ArrayDataset` type and the held-out split.

Images stay uint8 (N, C, H, W) until a loader turns a batch into float32 in [0, 1]:
four times less memory and bandwidth than float, and the exact bytes of the source files.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DatasetError


@dataclass
class ArrayDataset:
    """Image classification data held in memory.

    ``mean``/``std`` are per-channel statistics in [0, 1] units of the TRAIN split; the
    models normalise internally, so loaders hand out un-normalised [0, 1] images.
    ``pad``/``flip`` describe the train-time augmentation (random crop with ``pad`` pixels of
    zero padding on each side, random horizontal flip); a loader built with train=False
    ignores them.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        img, lab = self.images, self.labels
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.dim() != 4:
            raise DatasetError(
                f"{self.name}: images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{getattr(img, 'dtype', type(img).__name__)} {tuple(getattr(img, 'shape', ()))}; "
                "convert with (x * 255).round().to(torch.uint8)"
            )
        if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or lab.dim() != 1:
            raise DatasetError(f"{self.name}: labels must be an int64 tensor of shape (N,); convert with labels.long()")
        if lab.shape[0] != img.shape[0]:
            raise DatasetError(f"{self.name}: {img.shape[0]} images but {lab.shape[0]} labels; they must match one to one")
        if img.device.type != "cpu" or lab.device.type != "cpu":
            raise DatasetError(f"{self.name}: keep ArrayDataset tensors on the CPU; loaders move them to the device")
        channels = img.shape[1]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(f"{self.name}: mean/std need one value per channel ({channels}), got {len(self.mean)}/{len(self.std)}")
        if self.pad < 0:
            raise DatasetError(f"{self.name}: pad must be >= 0, got {self.pad}")
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
            raise DatasetError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), found [{int(lab.min())}, {int(lab.max())}]; "
                "fix num_classes or the label file"
            )
        if not img.is_contiguous():
            self.images = img.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor) -> "ArrayDataset":
        """The samples at ``idx`` (int64 indices or a bool mask), same metadata."""
        idx = torch.as_tensor(idx)
        return ArrayDataset(
            name=self.name,
            images=self.images[idx].contiguous(),
            labels=self.labels[idx].contiguous(),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            pad=self.pad,
            flip=self.flip,
        )


def split_holdout(ds: ArrayDataset, n_holdout: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``ds`` (normally the TRAIN split) into (rest, holdout) with ``n_holdout`` samples held out.

    The holdout is a seeded random choice, disjoint from the rest; both parts keep the
    original sample order so that the split is a pure function of (len(ds), n_holdout, seed).
    It is for per-epoch monitoring without touching the test split.
    """
    n = len(ds)
    if not 0 < n_holdout < n:
        raise DatasetError(f"{ds.name}: n_holdout must be in [1, {n - 1}] for {n} samples, got {n_holdout}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    holdout_idx = perm[:n_holdout].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[holdout_idx] = False
    return ds.subset(keep.nonzero().squeeze(1)), ds.subset(holdout_idx)
