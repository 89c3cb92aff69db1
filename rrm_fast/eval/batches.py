"""Where evaluation samples come from: a dataset or tensors, in order, in seeded batches.

Every batch draws its random numbers from a generator seeded by (seed, index of its first
sample), so a result does not depend on which batches ran before it (resume) or on how many
ran in the same process.
"""
from __future__ import annotations

import torch


def batch_seed(seed: int, start: int) -> int:
    """The generator seed for the batch starting at sample ``start``: fixed per batch, so a
    resumed or re-batched-from-the-same-start run draws the same random starts."""
    return seed * 1_000_003 + start


def batch_generator(device, seed: int, start: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(batch_seed(seed, start))


def dataset_batches(ds, batch_size, device):
    """(start index, x float [0,1] on device, y) in dataset order. In-memory datasets are sliced;
    folder datasets (decoded from disk) go through the project's eval loader, in order."""
    if hasattr(ds, "images"):
        for i in range(0, len(ds), batch_size):
            x = ds.images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
            y = ds.labels[i:i + batch_size].to(device, non_blocking=True)
            yield i, x, y
        return
    from ..data import make_loader
    start = 0
    for x, y in make_loader("auto", ds, batch_size, train=False, device=device):
        yield start, x.float(), y
        start += int(y.numel())


def tensor_batches(x, y, batch_size):
    """(start index, x, y) slices of tensors already on their device."""
    for i in range(0, x.shape[0], batch_size):
        yield i, x[i:i + batch_size], y[i:i + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def first_samples(ds, k, device, batch_size=500):
    """The first ``k`` samples as (x, y) tensors on ``device``."""
    xs, ys, have = [], [], 0
    for _, x, y in dataset_batches(ds, min(batch_size, k), device):
        xs.append(x[:k - have])
        ys.append(y[:k - have])
        have += xs[-1].shape[0]
        if have >= k:
            break
    return torch.cat(xs), torch.cat(ys)


def with_progress_bar(it, total, desc, show):
    if not show:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
