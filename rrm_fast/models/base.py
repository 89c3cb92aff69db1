"""The model shape every rrm_fast model has: normalise -> backbone -> [projection] -> classifier.

phi(x), the penultimate features, is the input of the final linear layer. Normalisation
(mean/std) lives inside the model so inputs are in [0, 1] and epsilon is in pixel units.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers so they move with the model and are saved."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FeatureClassifier(nn.Module):
    """normalize -> backbone (pooled, flat features) -> projection (identity unless added) -> fc.

    ``forward(x)`` returns logits; ``forward(x, return_features=True)`` returns
    ``(logits, phi)`` from one pass, so methods that need both pay for one forward.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.proj = nn.Identity()
        self.fc = nn.Linear(feature_dim, num_classes)
        self.backbone_dim = feature_dim
        self.num_classes = num_classes

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    def forward(self, x, return_features: bool = False):
        phi = self.proj(self.backbone(self.normalize(x)))
        logits = self.fc(phi)
        return (logits, phi) if return_features else logits

    def features(self, x):
        return self.forward(x, return_features=True)[1]

    @property
    def classifier(self) -> nn.Linear:
        """The Linear layer mapping phi to logits (for --head-init teacher)."""
        return self.fc

    def add_projection(self, dim: int) -> None:
        """RRM's width adapter: a learnable linear map from the backbone's pooled features to
        ``dim`` (the teacher's width); the projected vector is phi and feeds a new classifier."""
        if dim == self.feature_dim:
            return
        self.proj = nn.Linear(self.backbone_dim, dim)
        self.fc = nn.Linear(dim, self.num_classes)
