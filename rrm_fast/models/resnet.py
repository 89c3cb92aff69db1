"""ResNet-18/50 and PreActResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
as used by the RRM, Fast AT and RSLAD papers for 32x32 inputs; and resnet_small, three
BasicBlocks for 28x28 inputs on a CPU."""
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureClassifier


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes * 4:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNetBackbone(nn.Module):
    def __init__(self, block, num_blocks, in_channels=3, preact=False, widths=(64, 128, 256, 512)):
        super().__init__()
        self.cin = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.preact = preact
        self.layers = nn.Sequential(*[
            self._make_layer(block, planes, n, stride)
            for planes, n, stride in zip(widths, num_blocks, (1, 2, 2, 2))
        ])
        self.out_dim = widths[-1] * block.expansion
        # PreAct nets end with BN+ReLU before pooling; post-act nets apply BN+ReLU to the stem.
        self.final_bn = nn.BatchNorm2d(self.out_dim) if preact else None

    def _make_layer(self, block, planes, n, stride):
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(block(self.cin, planes, s))
            self.cin = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.final_bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def _resnet(block, blocks, preact, num_classes, in_channels, mean, std, widths=(64, 128, 256, 512)):
    bb = ResNetBackbone(block, blocks, in_channels, preact, widths)
    if preact:
        del bb.bn1  # PreAct stem has no BN after the first conv
    return FeatureClassifier(bb, bb.out_dim, num_classes, mean, std)


def resnet18(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    return _resnet(BasicBlock, (2, 2, 2, 2), False, num_classes, in_channels, mean, std)


def resnet50(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    return _resnet(Bottleneck, (3, 4, 6, 3), False, num_classes, in_channels, mean, std)


def preact_resnet18(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    return _resnet(PreActBlock, (2, 2, 2, 2), True, num_classes, in_channels, mean, std)


def resnet_small(num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,), **_):
    """A small residual net for 28x28 inputs (the transfer study's second student): a 32-wide
    stem and one BasicBlock per stage at widths 32, 64, 128 (strides 1, 2, 2), so phi is 128-d
    like the demo teacher's; about twice cnn_wide's compute, with BatchNorm."""
    return _resnet(BasicBlock, (1, 1, 1), False, num_classes, in_channels, mean, std, widths=(32, 64, 128))
