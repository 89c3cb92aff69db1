"""`synthetic`: deterministic random data for SMOKE TESTS ONLY (CI, quick CLI checks).

10 classes of 1x28x28 uint8 images. Each class has a fixed random binary template; an image
is its class template (bright where the template is on) plus uniform noise, so a small model
learns it within an epoch and a pipeline bug (labels shuffled against images) shows up as
chance accuracy. Nothing measured on it says anything about robustness.
"""
from __future__ import annotations

import torch

from .arrays import ArrayDataset

NUM_CLASSES = 10
SIZES = {"train": 6000, "test": 1000}
_TEMPLATE_SEED = 20240601
_SPLIT_SEEDS = {"train": 1, "test": 2}
_SIGNAL, _NOISE = 150, 105  # template pixels reach 150 + noise in [0, 105]: uint8 never overflows


def _templates() -> torch.Tensor:
    gen = torch.Generator().manual_seed(_TEMPLATE_SEED)
    return torch.rand(NUM_CLASSES, 1, 28, 28, generator=gen) < 0.5


def _generate(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(_TEMPLATE_SEED + _SPLIT_SEEDS[split])
    n = SIZES[split]
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    noise = torch.randint(0, _NOISE + 1, (n, 1, 28, 28), generator=gen, dtype=torch.int16)
    images = (_templates()[labels].to(torch.int16) * _SIGNAL + noise).to(torch.uint8)
    return images.contiguous(), labels


def load_synthetic(split: str) -> ArrayDataset:
    images, labels = _generate(split)
    # Statistics of the generated TRAIN split (cheap to regenerate), so both splits share them.
    train_images = images if split == "train" else _generate("train")[0]
    flat = train_images.float().div_(255)
    return ArrayDataset(
        name="synthetic", images=images, labels=labels, num_classes=NUM_CLASSES,
        mean=(float(flat.mean()),), std=(float(flat.std(unbiased=False)),), pad=0, flip=False,
    )
