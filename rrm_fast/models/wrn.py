"""WideResNet-34-10 (Zagoruyko & Komodakis), the standard CIFAR robust-training teacher."""
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureClassifier


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNetBackbone(nn.Module):
    def __init__(self, depth=34, widen=10, in_channels=3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.out_dim = cin

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def wrn34_10(num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, **_):
    bb = WideResNetBackbone(34, 10, in_channels)
    return FeatureClassifier(bb, bb.out_dim, num_classes, mean, std)
