"""`make_loader`: build a batch loader of the requested kind, or pick one with kind="auto"."""
from __future__ import annotations

import logging

import torch

from .arrays import ArrayDataset
from .dali_loader import DaliLoader, dali_available
from .device_loader import DeviceLoader
from .errors import DatasetError
from .imagefolder import FolderDataset
from .torch_loader import TorchLoader

LOADER_KINDS = ("auto", "device", "torch", "dali")
log = logging.getLogger("rrm_fast")

# On an accelerator the device loader keeps the padded uint8 dataset resident; leave most of
# the free memory to the model and its activations.
_DEVICE_MEMORY_FRACTION = 0.25


def fits_on_device(ds: ArrayDataset, device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    n, c, h, w = ds.images.shape
    # the device loader's store: zero-padded, plus a mirrored copy when flipping
    padded_bytes = n * c * (h + 2 * ds.pad) * (w + 2 * ds.pad) * (2 if ds.flip else 1)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return padded_bytes <= _DEVICE_MEMORY_FRACTION * free
    return False


def pick_kind(ds, device: torch.device) -> str:
    """device for in-memory data that fits; dali for folders when installed; torch otherwise."""
    if isinstance(ds, ArrayDataset):
        return "device" if fits_on_device(ds, device) else "torch"
    if isinstance(ds, FolderDataset):
        return "dali" if dali_available() else "torch"
    raise DatasetError(f"no loader for a {type(ds).__name__}; pass an ArrayDataset or FolderDataset from load_dataset")


def make_loader(kind: str, ds, batch_size: int, *, train: bool, device: str | torch.device = "cpu", seed: int = 0,
                drop_last: bool = False, channels_last: bool = False, num_workers: int | None = None,
                rank: int = 0, world_size: int = 1):
    """A loader yielding (x float32 [0,1] (N,C,H,W) on ``device``, y int64 on ``device``) batches.

    kind: "device" (dataset resident on the device, batched augmentation), "torch" (DataLoader
    with workers), "dali" (NVIDIA DALI pipeline) or "auto". All kinds share the epoch
    semantics of sampling.py: ``set_epoch``, ``set_start_batch``, ``len`` = batches per epoch.
    ``num_workers``: worker processes (torch) or threads (dali); None = cores - 1, at most 8.
    The device loader has no workers and ignores it.
    """
    if kind not in LOADER_KINDS:
        raise DatasetError(f"unknown loader {kind!r}; use one of {', '.join(LOADER_KINDS)}")
    device = torch.device(device)
    if kind == "auto":
        kind = pick_kind(ds, device)
        log.info("loader auto: picked %r for %s (%d samples) on %s", kind, getattr(ds, "name", "dataset"), len(ds), device)
    common = dict(train=train, device=device, seed=seed, drop_last=drop_last, channels_last=channels_last,
                  rank=rank, world_size=world_size)
    if kind == "device":
        if not isinstance(ds, ArrayDataset):
            raise DatasetError(f"the device loader needs an in-memory ArrayDataset, got {type(ds).__name__}; use --loader torch or dali")
        return DeviceLoader(ds, batch_size, **common)
    if kind == "torch":
        return TorchLoader(ds, batch_size, num_workers=num_workers, **common)
    return DaliLoader(ds, batch_size, num_workers=num_workers, **common)
