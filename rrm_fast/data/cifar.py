"""CIFAR-10 / CIFAR-100 from the standard "python version" folders, read WITHOUT plain pickle.load.

The official files are Python-2 pickles of dicts of numpy arrays. A pickle can name any
importable callable, so loading an untrusted one with pickle.load runs arbitrary code. The
`RestrictedUnpickler` below resolves only the handful of globals those files need (numpy
array/dtype reconstruction, and latin-1 byte decoding for files re-pickled by Python 3) and
refuses everything else with a one-line "unsafe pickle" DatasetError.
"""
from __future__ import annotations

import _codecs
import os
import pickle

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DatasetError

try:  # numpy >= 2 moved the implementation; the old path still works but warns on import.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` restricted to latin-1: Python 3's protocol-2 pickles store bytes this way."""
    if encoding not in ("latin1", "latin-1"):
        raise DatasetError(f"unsafe pickle: _codecs.encode with codec {encoding!r} (only latin-1 appears in CIFAR files)")
    return _codecs.encode(text, encoding)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # written by numpy 1.x (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays, lists, dicts, ints and strings, nothing else."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")  # the real files are Python 2 pickles with byte-string keys
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"unsafe pickle: {self.path} references {module}.{name}, which a CIFAR batch file never needs; "
                "refusing to load it (re-download the official archive)"
            ) from None

    def persistent_load(self, pid):
        raise DatasetError(f"unsafe pickle: {self.path} uses persistent ids, which a CIFAR batch file never needs; refusing to load it")


def load_pickle_restricted(path: str) -> object:
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, path).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as exc:
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}); re-download the archive") from None


# (folder name, train files, test files, label key, classes, url). Means/stds are per-channel
# statistics of the 50k train images in [0, 1] units (population std), kept as constants so
# train and test normalise identically.
_SPECS = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key=b"labels", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        files={"train": ["train"], "test": ["test"]},
        label_key=b"fine_labels", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _how_to_get(name: str) -> str:
    spec = _SPECS[name]
    return (f"download {spec['url']}, extract it, and pass --data-dir pointing at {spec['folder']}/ "
            f"or the folder that contains it")


def resolve_cifar_dir(name: str, data_dir: str | None) -> str:
    """Accept the batches folder itself or its parent."""
    spec = _SPECS[name]
    if data_dir is None:
        raise DatasetError(f"{name} needs a data folder: {_how_to_get(name)}")
    for candidate in (data_dir, os.path.join(data_dir, spec["folder"])):
        if os.path.isfile(os.path.join(candidate, spec["files"]["test"][0])):
            return candidate
    raise DatasetError(f"{name} not found at {data_dir} (no {spec['files']['test'][0]} there or in {spec['folder']}/): {_how_to_get(name)}")


def load_cifar(name: str, split: str, data_dir: str | None) -> ArrayDataset:
    spec = _SPECS[name]
    folder = resolve_cifar_dir(name, data_dir)
    images, labels = [], []
    for fname in spec["files"][split]:
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            raise DatasetError(f"{name} file missing: {path}: {_how_to_get(name)}")
        batch = load_pickle_restricted(path)
        if not isinstance(batch, dict) or b"data" not in batch or spec["label_key"] not in batch:
            raise DatasetError(f"{path}: expected a dict with b'data' and {spec['label_key']!r}; is this the {spec['folder']} archive?")
        data, lab = batch[b"data"], np.asarray(batch[spec["label_key"]])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got "
                               f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}; re-download the archive")
        if lab.shape != (data.shape[0],):
            raise DatasetError(f"{path}: {data.shape[0]} images but {lab.shape} labels; re-download the archive")
        # Each row is the R plane, then G, then B, each 32x32 row-major: exactly (3, 32, 32).
        images.append(torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab.astype(np.int64)))
    lab_all = torch.cat(labels)
    if lab_all.numel() and (int(lab_all.min()) < 0 or int(lab_all.max()) >= spec["num_classes"]):
        raise DatasetError(f"{name} {split} in {folder}: labels outside 0..{spec['num_classes'] - 1}; wrong archive?")
    return ArrayDataset(
        name=name, images=torch.cat(images), labels=lab_all, num_classes=spec["num_classes"],
        mean=spec["mean"], std=spec["std"], pad=4, flip=True,
    )
