"""Helpers shared by the test modules (imported as ``helpers``; test modules never import each other).

Trainer pieces: child-process environment, flag lists, bit-for-bit run comparison, fault-injecting
callbacks, a tiny image-folder writer.

Evaluation pieces: small real Fashion-MNIST CNNs for the evaluation and attack tests (trained once,
cached). ``trained_cnn(noise_sigma=0.0)`` trains a ~0.1M-parameter CNN with plain torch on 6000
Fashion-MNIST training images (Gaussian noise augmentation when noise_sigma > 0, as randomized
smoothing needs) and caches the weights under $RRM_FAST_CACHE, so every test module shares one
training run per variant. ``QuantisedInput`` wraps a model with a deliberately masked input
stage: torch.round has zero gradient everywhere, so gradient attacks see nothing.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rrm_fast.data import load_dataset
from rrm_fast.train import Callback

REPO = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "images_per_second"}  # metrics.jsonl figures that depend on the clock, not the computation


def child_env(**extra) -> dict:
    """Environment for a child python: this checkout first on the path, one thread (CPU float
    results may depend on the thread count)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)


def flags(**values) -> list[str]:
    """``--key value`` pairs for the trainer's command line (``train_size`` -> ``--train-size``)."""
    argv = []
    for k, v in values.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


def metrics_rows(run_dir: Path, drop=TIMING) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def same_run(ref: Path, other: Path, why: str) -> None:
    """Two runs ended with the same weights, metrics (timing aside) and test figures, bit for bit."""
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "final.safetensors")), load_file(str(other / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{why}: weight {k} differs"
    assert metrics_rows(ref) == metrics_rows(other), why
    tests = [json.loads((d / "report.json").read_text())["test"] for d in (ref, other)]
    keys = ("n", "clean_acc", "robust_acc")
    assert {k: tests[0][k] for k in keys} == {k: tests[1][k] for k in keys}, why


class SimulatedCrash(Exception):
    pass


class CrashAtSave(Callback):
    """Raises SimulatedCrash at the n-th training-state write, before it commits or right after."""

    def __init__(self, n: int, before: bool):
        self.n, self.before, self.calls = n, before, 0

    def on_save_state(self, trainer):
        self.calls += 1
        if self.before and self.calls == self.n:
            raise SimulatedCrash

    def on_state_saved(self, trainer, path):
        if not self.before and self.calls == self.n:
            raise SimulatedCrash


class SignalAtStep(Callback):
    """Sends this process ``signum`` once, while minibatch ``step`` (1-based) ends: as if the
    user pressed Ctrl-C during it."""

    def __init__(self, step: int, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_batch_end(self, trainer, x, y, res):
        if trainer.progress.global_step == self.step:
            signal.raise_signal(self.signum)


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 8, seed: int = 0) -> Path:
    """A tiny ImageNet-style tree (train/ and val/), JPEG and PNG files of several sizes; each
    class has its own colour so a model can learn it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                base = np.zeros((h, w, 3), np.float64)
                base[..., c % 3] = 200
                pixels = (base + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return root


def write_fashion_mnist(folder: Path, n=200, labels=None, truncate_images=False) -> Path:
    """A small Fashion-MNIST-format folder (four gzip IDX files) of seeded random images, for --data-dir."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, (img_name, lab_name) in {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}.items():
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes()
        if truncate_images and split == "train":
            pixels = pixels[: len(pixels) // 2]
        lab = np.asarray(labels if labels is not None else rng.integers(0, 10, n), dtype=np.uint8)
        with gzip.open(folder / img_name, "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
        with gzip.open(folder / lab_name, "wb") as f:
            f.write(struct.pack(">II", 2049, n) + lab.tobytes())
    return folder


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
