"""Datasets (Fashion-MNIST, CIFAR-10/100, synthetic) and the loaders that feed them.

    ds = load_dataset("fashion_mnist", "train")
    train_ds, holdout = split_holdout(ds, 5000, seed=0)
    loader = make_loader("auto", train_ds, 128, train=True, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader: ...
"""
from .arrays import ArrayDataset, split_holdout
from .datasets import DATASETS, SPLITS, load_dataset
from .device_loader import DeviceLoader
from .errors import DatasetError
from .loaders import LOADER_KINDS, make_loader

__all__ = [
    "ArrayDataset", "DATASETS", "DatasetError", "DeviceLoader", "LOADER_KINDS", "SPLITS",
    "load_dataset", "make_loader", "split_holdout",
]
