"""Small CNNs for 28x28 inputs (Fashion-MNIST), sized for a 2-core CPU.

cnn_small: the demo's teacher. cnn_wide: the demo's student (twice the conv widths, the same
128-d phi). The phi width is kept equal on purpose: measured on the held-out train slice, an
RRM student whose phi goes through a learned projection to the teacher's width transferred
clearly less robustness in the demo's 2-epoch budget (PGD-10 48% vs 55% after one epoch on
20k images) than one that matches the teacher's phi directly with the teacher's head copied in.
"""
import torch.nn as nn

from .base import FeatureClassifier


def _conv_block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


def _cnn(in_channels, widths, hidden, image_size):
    c1, c2 = widths
    layers = _conv_block(in_channels, c1) + [nn.MaxPool2d(2)]
    layers += _conv_block(c1, c2) + [nn.MaxPool2d(2)]
    side = image_size // 4
    layers += [nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def cnn_small(num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,), image_size=28):
    return FeatureClassifier(_cnn(in_channels, (32, 64), 128, image_size), 128, num_classes, mean, std)


def cnn_wide(num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,), image_size=28):
    return FeatureClassifier(_cnn(in_channels, (64, 128), 128, image_size), 128, num_classes, mean, std)


def cnn_wide256(num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,), image_size=28):
    """cnn_wide with a 256-d phi: against the demo's 128-d teacher, RRM adds its learned
    256 -> 128 projection (the transfer study's phi-width lever)."""
    return FeatureClassifier(_cnn(in_channels, (64, 128), 256, image_size), 256, num_classes, mean, std)
