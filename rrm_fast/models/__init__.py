"""Model zoo. Every model maps [0,1] images to logits and exposes phi, its penultimate
features: ``model(x, return_features=True) -> (logits, phi)``, ``model.features(x)``,
``model.feature_dim``, ``model.classifier`` and ``model.add_projection(dim)``."""
from __future__ import annotations

from .base import FeatureClassifier, Normalize
from .cnn import cnn_small, cnn_wide, cnn_wide256
from .resnet import preact_resnet18, resnet18, resnet50, resnet_small
from .tap import FeatureTap
from .vgg import vgg11, vgg16
from .wrn import wrn34_10

ARCHS = {
    "cnn_small": cnn_small,
    "cnn_wide": cnn_wide,
    "cnn_wide256": cnn_wide256,
    "resnet_small": resnet_small,
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "wrn34_10": wrn34_10,
}


def create_model(arch: str, num_classes: int = 10, in_channels: int = 1, mean=(0.5,), std=(0.5,), image_size: int = 28):
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    mean, std = tuple(mean), tuple(std)
    if len(mean) != in_channels:  # a single-channel stat given for an RGB model, or vice versa
        mean, std = (mean[0],) * in_channels, (std[0],) * in_channels
    model = ARCHS[arch](num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, image_size=image_size)
    # what it takes to rebuild this model from a checkpoint (see rrm_fast.checkpoint)
    model.spec = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, "mean": list(mean),
                  "std": list(std), "image_size": image_size}
    return model


def attach_projection(student, teacher_dim: int) -> bool:
    """Give the student RRM's learnable projection when its phi width differs from the
    teacher's. Returns True when a projection was added."""
    if student.feature_dim == teacher_dim:
        return False
    student.add_projection(teacher_dim)
    return True


def copy_head(student, teacher) -> None:
    """--head-init teacher: start the student's classifier as a copy of the teacher's (phi widths
    must match, directly or through the projection)."""
    s, t = student.classifier, teacher.classifier
    if s.weight.shape != t.weight.shape:
        raise ValueError(
            f"--head-init teacher needs equal classifier shapes; student {tuple(s.weight.shape)} vs teacher {tuple(t.weight.shape)}"
        )
    with __import__("torch").no_grad():
        s.weight.copy_(t.weight)
        if s.bias is not None and t.bias is not None:
            s.bias.copy_(t.bias)


__all__ = ["ARCHS", "create_model", "attach_projection", "copy_head", "FeatureClassifier", "FeatureTap", "Normalize"]
