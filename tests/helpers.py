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


def fit(model, x, y, steps: int, batch_size: int, gen=None, perturb=None):
    """Adam (lr 2e-3) on cross-entropy over ``steps`` random minibatches (drawn from ``gen``),
    each optionally replaced by ``perturb(xb, yb)`` (noise, an attack) first."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        xb = x[idx] if perturb is None else perturb(x[idx], y[idx])
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def cached(name: str, make_model, train):
    """``make_model()`` with the weights cached under $RRM_FAST_CACHE/name, else trained by
    ``train(model)`` (from torch seed 0, whatever ran before in this process) and cached."""
    cache = Path(os.environ.get("RRM_FAST_CACHE", "/tmp")) / name
    torch.manual_seed(0)
    model = make_model()
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    train(model)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


def trained_cnn(noise_sigma: float = 0.0, steps: int = 400) -> TinyCNN:
    def train(model):
        x, y = fmnist("train", 6000)
        gen = torch.Generator().manual_seed(0)
        noise = (lambda xb, yb: xb + noise_sigma * torch.randn(xb.shape, generator=gen)) if noise_sigma > 0 else None
        fit(model, x, y, steps, 128, gen, noise)
    return cached(f"eval_tests_tinycnn_sigma{noise_sigma:g}_s{steps}.pt", TinyCNN, train)


class Tempered(nn.Module):
    """Logits divided by a temperature: the same argmax, so exactly as robust, but a softer
    softmax -- the RRM student's symptom (small logits), made on purpose."""

    def __init__(self, model, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x):
        return self.model(x) / self.temperature


def adversarially_trained_cnn(eps: float = 0.1, steps: int = 600, attack_steps: int = 3) -> TinyCNN:
    """A TinyCNN trained with PGD-AT (PGD-``attack_steps`` CE, random start, step 2.5 eps / k) on
    6000 Fashion-MNIST training images at L-inf ``eps``: a small but real robust model, cached
    under $RRM_FAST_CACHE like ``trained_cnn``."""
    from rrm_fast.attacks import PGD

    def train(model):
        x, y = fmnist("train", 6000)
        gen = torch.Generator().manual_seed(0)

        def attack(xb, yb):
            model.eval()  # the attack sees the model as evaluation will
            x_adv = PGD(model, eps=eps, steps=attack_steps, generator=gen)(xb, yb)
            model.train()
            return x_adv
        fit(model, x, y, steps, 128, gen, attack)
    return cached(f"eval_tests_tinycnn_pgdat_e{eps:g}_s{steps}_k{attack_steps}.pt", TinyCNN, train)


def noise_trained_checkpoint(path, eps: float = 0.03) -> str:
    """A cnn_small trained for a moment with Gaussian noise (sigma 0.25) on 3000 Fashion-MNIST
    images, saved as a trainer-style checkpoint (safetensors + JSON sidecar) at ``path``."""
    from rrm_fast.checkpoint import save_model
    from rrm_fast.models import create_model

    def train(model):
        x, y = fmnist("train", 3000)
        fit(model, x, y, 120, 64, perturb=lambda xb, yb: xb + 0.25 * torch.randn_like(xb))
    model = cached("eval_tests_cnn_small_noise0.25.pt", lambda: create_model("cnn_small", 10, 1, (0.286,), (0.353,)),
                   train)
    save_model(path, model, {"config": {"dataset": "fashion_mnist", "eps": eps, "norm": "Linf",
                                        "method": "gaussian_aug", "method_options": {"sigma": 0.25}}})
    return str(path)
