"""Projected gradient descent (Madry et al.) and FGSM with a random start (Wong et al.)."""
from __future__ import annotations

import torch

from .base import Attack, ce_per_sample, default_step


class PGD(Attack):
    """k steps of size alpha from a random start in the eps-ball, projected after each step.

    ``restarts`` > 1 keeps, per sample, the first restart that fools the model (else the
    highest-loss one). ``early_stop`` freezes a sample once it is misclassified (through the
    step op's mask): robust accuracy is unchanged and the adversarial example found is kept
    rather than stepped away from. ``loss_fn(logits, target) -> per-sample loss`` lets
    methods such as TRADES or RSLAD maximise their own objective (target may be soft labels).
    """

    def __init__(self, model, eps, alpha=None, steps=10, norm="Linf", random_start=True, restarts=1,
                 loss_fn=ce_per_sample, early_stop=False, lo=0.0, hi=1.0, generator=None):
        super().__init__(model, eps, norm, lo, hi)
        if steps < 1:
            raise ValueError(f"PGD steps must be >= 1 (got {steps})")
        if restarts < 1:
            raise ValueError(f"PGD restarts must be >= 1 (got {restarts})")
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else default_step(self.eps, self.steps)
        self.random_start = random_start
        self.restarts = int(restarts)
        self.loss_fn = loss_fn
        self.early_stop = early_stop
        self.generator = generator

    def perturb(self, x, y, score: bool = True):
        """One restart: returns (delta, final logits, final per-sample loss); with score=False
        the final forward (only needed to compare restarts) is skipped and both are None."""
        delta = torch.zeros_like(x, dtype=torch.float32)
        if self.random_start and self.eps > 0:
            self.random_init_(delta, x, self.generator)
        mask = None
        for _ in range(self.steps):
            grad, logits, _ = self.input_grad(x, delta, y, self.loss_fn)
            if self.early_stop:
                mask = logits.argmax(1) == y  # still correct: keep stepping
            self.step_(delta, grad, x, self.alpha, mask)
        if not score:
            return delta, None, None
        with torch.no_grad():
            logits = self.model(x + delta)
            loss = self.loss_fn(logits, y)
        return delta, logits, loss

    def forward(self, x, y):
        x = x.detach().float()
        best_delta, best_logits, best_loss = self.perturb(x, y, score=self.restarts > 1)
        if self.restarts == 1:
            return (x + best_delta).detach()
        fooled = best_logits.argmax(1) != y
        for _ in range(self.restarts - 1):
            delta, logits, loss = self.perturb(x, y)
            now_fooled = logits.argmax(1) != y
            # take the new restart where the sample was not fooled before and it either fools now
            # or raises the loss
            take = ~fooled & (now_fooled | (loss > best_loss))
            best_delta = torch.where(take.view(-1, *[1] * (x.dim() - 1)), delta, best_delta)
            best_loss = torch.where(take, loss, best_loss)
            fooled = fooled | now_fooled
        return (x + best_delta).detach()


class FGSM(PGD):
    """One signed step (Fast AT's FGSM-RS when random_start=True, alpha = 1.25 eps)."""

    def __init__(self, model, eps, alpha=None, norm="Linf", random_start=True, loss_fn=ce_per_sample, lo=0.0, hi=1.0,
                 generator=None):
        super().__init__(model, eps, alpha if alpha is not None else 1.25 * eps, 1, norm, random_start, 1, loss_fn,
                         False, lo, hi, generator)
