"""Attacks, torchattacks-shaped: ``Attack(model, eps=..., alpha=..., steps=...)(x, y) -> x_adv``."""
from .base import Attack, canonical_norm, ce_per_sample
from .pgd import FGSM, PGD

__all__ = ["Attack", "PGD", "FGSM", "canonical_norm", "ce_per_sample"]
