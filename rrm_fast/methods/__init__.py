"""Training methods, one file each, registered by name for ``--method``."""
from .base import METHODS, Method, Option, RobustDropStop, StepOutput, ThreatModel, register
from . import natural, pgd_at, fast_at, free_at, rrm  # noqa: F401  (registration)
from . import kd, ard, rslad, kdiga, trades, gaussian_aug, crt  # noqa: F401  (peer methods, issue 6)

__all__ = ["METHODS", "Method", "Option", "RobustDropStop", "StepOutput", "ThreatModel", "register"]
