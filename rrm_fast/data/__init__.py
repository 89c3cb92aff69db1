"""Datasets (Fashion-MNIST, CIFAR-10/100, synthetic, image folders) and the loaders that feed them.

    ds = load_dataset("fashion_mnist", "train")
    train_ds, holdout = split_holdout(ds, 5000, seed=0)
    loader = make_loader("auto", train_ds, 128, train=True, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)          # required: the order is a function of (seed, epoch)
        for x, y in loader: ...

See docs/data.md.
"""
from .arrays import ArrayDataset, split_holdout
from .dali_loader import DaliLoader, dali_available
from .datasets import DATASETS, FOLDER_DATASETS, SPLITS, load_dataset
from .device_loader import DeviceLoader
from .errors import DatasetError
from .imagefolder import RESTRICTED_IMAGENET_RANGES, FolderDataset
from .loaders import LOADER_KINDS, make_loader
from .torch_loader import TorchLoader

__all__ = [
    "ArrayDataset", "DATASETS", "DaliLoader", "DatasetError", "DeviceLoader", "FOLDER_DATASETS", "FolderDataset",
    "LOADER_KINDS", "RESTRICTED_IMAGENET_RANGES", "SPLITS", "TorchLoader", "dali_available", "load_dataset",
    "make_loader", "split_holdout",
]
