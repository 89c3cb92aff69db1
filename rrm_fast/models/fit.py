"""Does an architecture fit an image size? Asked before a run builds or writes anything.

The zoo's networks shrink their feature maps with strides and max-pools sized for a
resolution (VGG's five pools for 32x32 CIFAR, the small CNNs' two for 28x28 Fashion-MNIST).
At a smaller size a pool's output becomes 0x0 and the first forward crashes; a little above
that, the last convolutions see 1x1 maps (a 3x3 kernel then reads mostly padding), which
trains but wastes the architecture. ``fit`` finds out by running the model on the ``meta``
device: shapes only, no memory, no arithmetic and no random numbers drawn.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Fit:
    arch: str
    side: int
    error: str | None = None         # why the forward pass fails at this size
    collapsed: int = 0               # convolutions (kernel > 1) that receive a 1x1 map

    @property
    def ok(self) -> bool:
        return self.error is None and self.collapsed == 0


def fit(arch: str, in_channels: int, side: int, spec: dict | None = None) -> Fit:
    """Run ``arch`` (or the model a checkpoint ``spec`` describes) on a meta-device batch of
    ``side`` x ``side`` images and report whether it fails or its feature maps collapse to 1x1."""
    from . import create_model
    seen = []

    def record(module, inputs):
        if module.kernel_size != (1, 1) and tuple(inputs[0].shape[-2:]) == (1, 1):
            seen.append(module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "initializing zero-element tensors" for a 0-wide layer
        with torch.device("meta"):
            if spec is None:
                model = create_model(arch, 10, in_channels, (0.5,) * in_channels, (0.5,) * in_channels, side)
            else:
                model = create_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["mean"], spec["std"],
                                     spec.get("image_size", 28))
        hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
        try:
            model(torch.empty(2, in_channels, side, side, device="meta"))
        except RuntimeError as e:
            return Fit(arch, side, error=" ".join(str(e).split())[:160])
        finally:
            for h in hooks:
                h.remove()
    return Fit(arch, side, collapsed=len(seen))


def fitting(in_channels: int, side: int) -> list[str]:
    """The architectures whose feature maps keep more than one pixel at this size."""
    from . import ARCHS
    return [a for a in ARCHS if fit(a, in_channels, side).ok]


def smallest_side(arch: str, in_channels: int) -> int | None:
    """The smallest power of two (up to 1024) at which ``arch`` runs without a collapse."""
    return next((2 ** k for k in range(1, 11) if fit(arch, in_channels, 2 ** k).ok), None)
