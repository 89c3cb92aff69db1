"""Fashion-MNIST from its four IDX files (gzip), the project's built-in default dataset.

The default folder is Debian's ``dataset-fashion-mnist`` package location. No augmentation
(pad=0, flip=False): the RRM/TRADES Fashion-MNIST recipes train on the raw 28x28 images,
and a random crop of a centred garment mostly removes information.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DatasetError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
NUM_CLASSES = 10
# Constants, not recomputed at load time, so train and test splits (and every run) normalise
# identically. They are the per-pixel mean and population std of the 60k train images in
# [0, 1] units; tests/test_data.py recomputes them from the real files.
MEAN = (0.2860,)
STD = (0.3530,)

HOW_TO_GET = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir DIR "
    "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
    "(from https://github.com/zalandoresearch/fashion-mnist)"
)


def _read_gz(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DatasetError(f"Fashion-MNIST not found at {path}: {HOW_TO_GET}")
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"Fashion-MNIST file {path} is not a readable gzip file ({exc}); re-download it: {HOW_TO_GET}") from None


def read_idx_images(path: str) -> torch.Tensor:
    """uint8 (N, 1, rows, cols) from an IDX3 image file, header checked against the payload size."""
    raw = _read_gz(path)
    if len(raw) < 16:
        raise DatasetError(f"{path}: truncated IDX image file ({len(raw)} bytes, header needs 16); re-download it")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise DatasetError(f"{path}: wrong magic number {magic} for an IDX image file (expected {IMAGES_MAGIC}); is it a label file or another format?")
    if len(raw) - 16 != n * rows * cols:
        raise DatasetError(f"{path}: header says {n}x{rows}x{cols} images but the file holds {len(raw) - 16} pixel bytes; re-download it")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    return torch.from_numpy(pixels.copy())


def read_idx_labels(path: str) -> torch.Tensor:
    """int64 (N,) from an IDX1 label file, header checked against the payload size."""
    raw = _read_gz(path)
    if len(raw) < 8:
        raise DatasetError(f"{path}: truncated IDX label file ({len(raw)} bytes, header needs 8); re-download it")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise DatasetError(f"{path}: wrong magic number {magic} for an IDX label file (expected {LABELS_MAGIC}); is it an image file or another format?")
    if len(raw) - 8 != n:
        raise DatasetError(f"{path}: header says {n} labels but the file holds {len(raw) - 8}; re-download it")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64))


def load_fashion_mnist(split: str, data_dir: str | None = None) -> ArrayDataset:
    folder = data_dir or DEFAULT_DIR
    if not os.path.isdir(folder):
        raise DatasetError(f"Fashion-MNIST not found at {folder}: {HOW_TO_GET}")
    image_file, label_file = FILES[split]
    images = read_idx_images(os.path.join(folder, image_file))
    labels = read_idx_labels(os.path.join(folder, label_file))
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"Fashion-MNIST {split} in {folder}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together")
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"Fashion-MNIST {split} in {folder}: label {int(labels.max())} out of range 0..9; the label file is not Fashion-MNIST")
    return ArrayDataset(
        name="fashion_mnist", images=images, labels=labels, num_classes=NUM_CLASSES,
        mean=MEAN, std=STD, pad=0, flip=False,
    )
