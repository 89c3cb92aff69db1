"""VGG-11/16 with batch norm for 32x32 inputs (CIFAR stem: 5 max-pools to 1x1, 512-d features)."""
import torch.nn as nn

from .base import FeatureClassifier

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(cfg, in_channels):
    layers, c = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def vgg11(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    return FeatureClassifier(_vgg(CONFIGS["vgg11"], in_channels), 512, num_classes, mean, std)


def vgg16(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    return FeatureClassifier(_vgg(CONFIGS["vgg16"], in_channels), 512, num_classes, mean, std)
