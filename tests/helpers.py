"""Shared test helpers (imported by test modules; holds no tests itself).

Small real Fashion-MNIST CNNs for the evaluation and attack tests (trained once, cached).

``trained_cnn(noise_sigma=0.0)`` trains a ~0.1M-parameter CNN with plain torch on 6000
Fashion-MNIST training images (Gaussian noise augmentation when noise_sigma > 0, as randomized
smoothing needs) and caches the weights under $RRM_FAST_CACHE, so every test module shares one
training run per variant. ``QuantisedInput`` wraps a model with a deliberately masked input
stage: torch.round has zero gradient everywhere, so gradient attacks see nothing.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrm_fast.data import load_dataset


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.286))
        self.register_buffer("std", torch.tensor(0.353))
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class QuantisedInput(nn.Module):
    """Gradient masking by construction: inputs snapped to 5 grey levels (zero gradient)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


@contextlib.contextmanager
def one_thread():
    """The test machine has 2 shared cores; small-batch ops run far faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fmnist(split: str, n: int):
    ds = load_dataset("fashion_mnist", split)
    return ds.images[:n].float() / 255, ds.labels[:n]


def trained_cnn(noise_sigma: float = 0.0, steps: int = 400) -> TinyCNN:
    cache = Path(os.environ.get("RRM_FAST_CACHE", "/tmp")) / f"eval_tests_tinycnn_sigma{noise_sigma:g}_s{steps}.pt"
    model = TinyCNN()
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    x, y = fmnist("train", 6000)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        xb = x[idx]
        if noise_sigma > 0:
            xb = xb + noise_sigma * torch.randn(xb.shape, generator=gen)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()
