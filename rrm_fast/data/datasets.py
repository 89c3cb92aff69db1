"""`load_dataset`: one entry point from a dataset name to its data."""
from __future__ import annotations

import os

from .arrays import ArrayDataset
from .cifar import _SPECS as CIFAR_SPECS
from .cifar import load_cifar
from .errors import DatasetError
from .fashion_mnist import DEFAULT_DIR as FASHION_MNIST_DIR
from .fashion_mnist import FILES as FASHION_MNIST_FILES
from .fashion_mnist import load_fashion_mnist
from .imagefolder import FolderDataset, load_imagefolder, load_restricted_imagenet
from .synthetic import load_synthetic

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "synthetic")  # in-memory ArrayDatasets
FOLDER_DATASETS = ("imagefolder", "restricted_imagenet")  # FolderDatasets decoded by the loader
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, data_dir: str | None = None, *,
                 resolution: int | None = None) -> ArrayDataset | FolderDataset:
    """Load ``split`` ("train" or "test") of dataset ``name`` (DATASETS or FOLDER_DATASETS).

    ``data_dir`` overrides the dataset's folder (Fashion-MNIST defaults to Debian's
    /usr/share/datasets/fashion-mnist; CIFAR and folder datasets need it). ``resolution``
    (folder datasets only, default 224) is the side of the square images the loaders
    produce. Nothing is downloaded.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name in FOLDER_DATASETS:
        load = load_imagefolder if name == "imagefolder" else load_restricted_imagenet
        return load(split, data_dir, 224 if resolution is None else resolution)
    if resolution is not None:
        raise DatasetError(f"{name} has a fixed image size; --resolution applies to {' and '.join(FOLDER_DATASETS)} only")
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir)
    if name == "synthetic":
        return load_synthetic(split)
    raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS + FOLDER_DATASETS)}")


def dataset_locations() -> dict[str, str]:
    """Where each dataset is looked for without --data-dir, and whether it is there (for python -m rrm_fast.info)."""
    files = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    have = [f for f in files if os.path.isfile(os.path.join(FASHION_MNIST_DIR, f))]
    fmnist = (f"{FASHION_MNIST_DIR}: present" if len(have) == len(files) else
              f"{FASHION_MNIST_DIR}: missing {len(files) - len(have)} of its {len(files)} files "
              "(apt-get install dataset-fashion-mnist, or pass --data-dir)")
    out = {"fashion_mnist": fmnist}
    for name, spec in CIFAR_SPECS.items():
        out[name] = f"no default folder: pass --data-dir (the {spec['folder']}/ folder or its parent; {spec['url']})"
    out["synthetic"] = "generated in memory (smoke tests only); no files"
    out["imagefolder"] = "no default folder: pass --data-dir DIR holding train/<class>/ and val/<class>/ images"
    out["restricted_imagenet"] = "no default folder: pass --data-dir with ImageNet's train/ and val/ class folders"
    return out
