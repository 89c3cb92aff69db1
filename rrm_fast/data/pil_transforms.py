"""Per-image PIL decoding and the ImageNet train/test geometry, for the torch loader.

Train: random-resized crop (scale 0.08-1, aspect 3/4-4/3, torchvision's algorithm) to
resolution x resolution, then a horizontal flip with probability 1/2, all drawn from a
generator seeded per image so that the result is a pure function of (seed, epoch, position).
Test: resize the shorter side to round(resolution / 0.875) (256 for 224), centre crop.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError

TEST_CROP_FRACTION = 0.875  # 224 of 256, the standard ImageNet evaluation crop
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"unreadable image {path} ({type(exc).__name__}: {exc}); delete or replace the file") from None


def random_resized_crop_box(width: int, height: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's RandomResizedCrop window."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
        target_area = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return left, top, left + w, top + h
    # Fallback: the central crop with the aspect ratio clamped into RATIO.
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_image(path: str, resolution: int, image_seed: int) -> np.ndarray:
    img = open_rgb(path)
    gen = torch.Generator().manual_seed(int(image_seed))
    box = random_resized_crop_box(img.width, img.height, gen)
    out = img.resize((resolution, resolution), Image.BILINEAR, box=box)
    if bool(torch.rand(1, generator=gen) < 0.5):
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def eval_image(path: str, resolution: int) -> np.ndarray:
    img = open_rgb(path)
    short = round(resolution / TEST_CROP_FRACTION)
    scale = short / min(img.width, img.height)
    w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)))
