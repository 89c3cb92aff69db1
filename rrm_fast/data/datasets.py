"""`load_dataset`: one entry point from a dataset name to its data."""
from __future__ import annotations

from .arrays import ArrayDataset
from .cifar import load_cifar
from .errors import DatasetError
from .fashion_mnist import load_fashion_mnist
from .synthetic import load_synthetic

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "synthetic")
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, data_dir: str | None = None) -> ArrayDataset:
    """Load ``split`` ("train" or "test") of dataset ``name`` (one of DATASETS).

    ``data_dir`` overrides the dataset's folder (Fashion-MNIST defaults to Debian's
    /usr/share/datasets/fashion-mnist; CIFAR needs it). Nothing is downloaded.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir)
    if name == "synthetic":
        return load_synthetic(split)
    raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
