"""What every attack shares: the threat model, the [lo, hi] box, and the PGD-step ops.

Attacks are torchattacks-shaped objects: ``attack = PGD(model, eps=0.1, alpha=0.01, steps=20)``
then ``x_adv = attack(x, y)``. They work in pixel space ([0, 1] inputs; models normalise
internally), never change the model's train/eval mode, and step through rrm_fast.ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops

NORMS = ("Linf", "L2")
# Madry et al.'s rule: k steps of 2.5 eps / k can walk from one side of the ball to the other
# (and back) from a random start; every PGD in the project defaults to it.
PGD_STEP_RATIO = 2.5


def default_step(eps: float, steps: int) -> float:
    """The PGD step size used when none is given: 2.5 * eps / steps."""
    return PGD_STEP_RATIO * eps / steps


def canonical_norm(norm: str) -> str:
    key = str(norm).lower().replace("_", "").replace("-", "")
    if key in ("linf", "inf", "linfinity"):
        return "Linf"
    if key in ("l2", "2"):
        return "L2"
    raise ValueError(f"unknown norm {norm!r}; choose 'Linf' or 'L2'")


def ce_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i per sample (<= 0: misclassified)."""
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], -float("inf"))
    return z_y - others.amax(1)


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner's margin loss to maximise, max_{i != y} z_i - z_y per sample (> 0:
    misclassified). Unlike CE it does not flatten when the softmax does: its gradient is the
    difference of two logit gradients whatever the logits' scale."""
    return -margin_loss(logits, y)


class Attack:
    def __init__(self, model, eps: float, norm: str = "Linf", lo: float = 0.0, hi: float = 1.0):
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (got {eps}); epsilon is in pixel units, e.g. 0.1 or 8/255")
        self.model = model
        self.eps = float(eps)
        self.norm = canonical_norm(norm)
        self.lo, self.hi = lo, hi

    def random_init_(self, delta, x, generator=None):
        init = ops.linf_random_init_ if self.norm == "Linf" else ops.l2_random_init_
        return init(delta, x, self.eps, self.lo, self.hi, generator=generator)

    def step_(self, delta, grad, x, alpha, mask=None):
        step = ops.linf_step_ if self.norm == "Linf" else ops.l2_step_
        return step(delta, grad, x, self.eps, alpha, self.lo, self.hi, mask)

    def input_grad(self, x, delta, y, loss_fn):
        """Gradient of sum_i loss_i(model(x + delta)) w.r.t. delta only (no weight gradients)."""
        delta.requires_grad_(True)
        logits = self.model(x + delta)
        loss = loss_fn(logits, y)
        grad, = torch.autograd.grad(loss.sum(), delta)
        delta.requires_grad_(False)
        return grad, logits.detach(), loss.detach()

    def __call__(self, x, y):
        return self.forward(x, y)

    def forward(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError
