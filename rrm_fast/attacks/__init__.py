"""Attacks, torchattacks-shaped: ``Attack(model, eps=..., alpha=..., steps=...)(x, y) -> x_adv``."""
from .apgd import APGD, APGDT, dlr_loss, dlr_targeted_loss
from .base import Attack, canonical_norm, ce_per_sample, cw_loss, default_step, margin_loss
from .pgd import FGSM, PGD
from .square import Square

__all__ = ["Attack", "PGD", "FGSM", "APGD", "APGDT", "Square", "canonical_norm", "ce_per_sample", "cw_loss", "default_step", "dlr_loss",
           "dlr_targeted_loss", "margin_loss"]
