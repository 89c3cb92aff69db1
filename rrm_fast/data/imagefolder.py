"""Folder datasets: any ImageNet-style tree of class subfolders, and Restricted-ImageNet.

Layout: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg`` (``DIR/test`` also
accepted for the test split). Class k is the k-th class folder in sorted order, as
torchvision's ImageFolder numbers them. Images are decoded by the loader (PIL in the torch
loader, DALI's decoder in the dali loader) at ``resolution`` x ``resolution``.

Restricted-ImageNet (Tsipras et al., 2019, as defined by the MadryLab `robustness`
library): 9 super-classes, each an inclusive range of ImageNet class indices over the
sorted 1000 wnid folders; images of the other classes are left out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# robustness/tools/constants.py: (first, last) ImageNet class index, both inclusive.
RESTRICTED_IMAGENET_RANGES = [(151, 268), (281, 285), (30, 32), (33, 37), (80, 100),
                              (365, 382), (389, 397), (118, 121), (300, 319)]
RESTRICTED_IMAGENET_CLASSES = ("dog", "cat", "frog", "turtle", "bird", "primate", "fish", "crab", "insect")
RESTRICTED_IMAGENET_MEAN, RESTRICTED_IMAGENET_STD = (0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)

SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test")}


@dataclass
class FolderDataset:
    """Image files on disk with their labels; decoded at load time by the loader.

    ``resolution``: side of the square images the loaders produce (random-resized crop at
    train time; resize of the shorter side to resolution/0.875, then centre crop, at test).
    """

    name: str
    samples: list[tuple[str, int]]
    classes: tuple[str, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int = 224

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([lab for _, lab in self.samples], dtype=torch.int64)

    def subset(self, idx: torch.Tensor) -> "FolderDataset":
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        return FolderDataset(self.name, [self.samples[i] for i in idx.tolist()], self.classes, self.num_classes,
                             self.mean, self.std, self.resolution)


_LAYOUT_HINT = "expected DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (ImageNet layout); pass that DIR as --data-dir"


def split_folder(data_dir: str | None, split: str, name: str) -> str:
    if data_dir is None:
        raise DatasetError(f"{name} needs --data-dir: {_LAYOUT_HINT}")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{name} folder not found: {data_dir}: {_LAYOUT_HINT}")
    for sub in SPLIT_FOLDERS[split]:
        folder = os.path.join(data_dir, sub)
        if os.path.isdir(folder):
            return folder
    raise DatasetError(f"wrong layout in {data_dir}: no {' or '.join(SPLIT_FOLDERS[split])}/ subfolder for the {split} split; {_LAYOUT_HINT}")


def class_folders(folder: str) -> list[str]:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetError(f"wrong layout in {folder}: no class subfolders (images must sit in {folder}/<class>/); {_LAYOUT_HINT}")
    return classes


def images_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or not 8 <= resolution <= 4096:
        raise DatasetError(f"resolution must be an integer in [8, 4096] pixels, got {resolution!r}")
    return resolution


def load_imagefolder(split: str, data_dir: str | None, resolution: int = 224) -> FolderDataset:
    folder = split_folder(data_dir, split, "imagefolder")
    classes = class_folders(folder)
    samples = []
    for label, cls in enumerate(classes):
        files = images_in(os.path.join(folder, cls))
        if not files:
            raise DatasetError(f"empty class folder {os.path.join(folder, cls)}: no {'/'.join(IMAGE_EXTENSIONS)} files; add images or remove the folder")
        samples.extend((f, label) for f in files)
    return FolderDataset("imagefolder", samples, tuple(classes), len(classes), IMAGENET_MEAN, IMAGENET_STD,
                         _check_resolution(resolution))


def load_restricted_imagenet(split: str, data_dir: str | None, resolution: int = 224) -> FolderDataset:
    folder = split_folder(data_dir, split, "restricted_imagenet")
    wnids = class_folders(folder)
    if len(wnids) != 1000:
        raise DatasetError(f"restricted_imagenet needs the 1000 ImageNet class folders in {folder}, found {len(wnids)}; "
                           "point --data-dir at a full ImageNet (ILSVRC2012) tree with val/ sorted into class folders")
    samples = []
    for label, (first, last) in enumerate(RESTRICTED_IMAGENET_RANGES):
        for class_index in range(first, last + 1):
            samples.extend((f, label) for f in images_in(os.path.join(folder, wnids[class_index])))
    if not samples:
        raise DatasetError(f"restricted_imagenet: no images in the selected class folders of {folder}; {_LAYOUT_HINT}")
    return FolderDataset("restricted_imagenet", samples, RESTRICTED_IMAGENET_CLASSES, len(RESTRICTED_IMAGENET_RANGES),
                         RESTRICTED_IMAGENET_MEAN, RESTRICTED_IMAGENET_STD, _check_resolution(resolution))
