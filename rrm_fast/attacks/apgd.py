"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and targeted APGD-DLR (APGD-T).

Step-size-free PGD: it starts with step 2*eps, adds momentum 0.75, and at checkpoints
p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions of the
iteration budget) it halves a sample's step and restarts it from its best point when either

1. fewer than rho = 0.75 of the steps since the last checkpoint raised the loss, or
2. its step was not halved at the last checkpoint and its best loss has not improved since.

Update (x_k the iterate, P the projection onto the eps-ball and the [lo, hi] box):
    z       = P(x_k + eta * step_direction(grad))         -- the fused PGD-step op
    x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))  a = 0.75 (1 on the first step)
The second projection is a zero-gradient call of the same op: sign(0) = 0 (L-inf) and a zero
gradient is no step (L2), so the op only projects onto the ball and the box.

DLR loss (scale- and shift-invariant, so saturated softmax cannot hide the gradient):
    DLR(z, y)    = -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)
    DLR_T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)
with z_pi1 >= z_pi2 >= ... the sorted logits.

A sample stops being attacked once it is misclassified (its trajectory does not depend on
the others, so dropping it changes nothing but the cost); the returned input is the first
misclassified point found, else the highest-loss point.
"""
from __future__ import annotations

import torch

from .base import Attack, ce_per_sample


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample untargeted DLR loss (higher = closer to misclassification)."""
    z = logits.float()
    z_sorted, idx_sorted = z.sort(dim=1)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    top_is_y = idx_sorted[:, -1] == y
    # the best other class is the runner-up when y is on top, else the top class
    z_other = torch.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample targeted DLR loss towards class ``target``."""
    z = logits.float()
    z_sorted = z.sort(dim=1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """(first period, shortest period, decrement) in iterations for the schedule
    p_1 = 0.22, p_{j+1} - p_j = max(p_j - p_{j-1} - 0.03, 0.06)."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def _sample_view(v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (ref.dim() - 1))


class APGD(Attack):
    """APGD with cross-entropy (``loss="ce"``) or DLR (``loss="dlr"``) loss.

    ``restarts`` > 1 reruns the attack (from a new random start) on the samples not yet
    fooled. ``generator`` seeds the random starts.
    """

    LOSSES = ("ce", "dlr")

    def __init__(self, model, eps, norm="Linf", steps=100, restarts=1, loss="ce", rho=0.75, momentum=0.75,
                 initial_step=2.0, lo=0.0, hi=1.0, generator=None):
        super().__init__(model, eps, norm, lo, hi)
        if steps < 1:
            raise ValueError(f"APGD steps must be >= 1 (got {steps})")
        if restarts < 1:
            raise ValueError(f"APGD restarts must be >= 1 (got {restarts})")
        if loss not in self.LOSSES:
            raise ValueError(f"unknown APGD loss {loss!r}; choose one of {', '.join(self.LOSSES)}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"APGD rho must be in (0, 1] (got {rho})")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = loss
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.initial_step = float(initial_step)
        self.generator = generator
        # the last single run's schedule: iterations at which checkpoints fell, and the final
        # per-sample step sizes of the samples never fooled (for tests and diagnostics)
        self.checkpoint_iters: list[int] = []
        self.final_step_sizes = None

    # ---- losses -----------------------------------------------------------------------
    def _loss_fn(self, target):
        if self.loss == "ce":
            return ce_per_sample
        return dlr_loss

    def _check_classes(self, num_classes: int) -> None:
        if self.loss == "dlr" and num_classes < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes (model has {num_classes}); use loss='ce'")

    # ---- the iteration ----------------------------------------------------------------
    def _random_start(self, x: torch.Tensor) -> torch.Tensor:
        """A random point on the boundary of the eps-ball (as the reference does), in the box."""
        if self.norm == "Linf":
            t = 2 * torch.rand(x.shape, generator=self.generator, device=x.device, dtype=torch.float32) - 1
            scale = t.flatten(1).abs().amax(1)
        else:
            t = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=torch.float32)
            scale = t.flatten(1).norm(dim=1)
        delta = self.eps * t / _sample_view(scale + 1e-12, t)
        self.step_(delta, torch.zeros_like(delta), x, 0.0)  # zero-gradient step = project onto box
        return delta

    def _step_per_sample_(self, delta, grad, x, step_size):
        """The fused PGD step with a per-sample step size: the ops take one alpha per call,
        and step sizes are 2*eps / 2^m, so there are only a handful of distinct values."""
        for value in torch.unique(step_size).tolist():
            self.step_(delta, grad, x, value, step_size == value)
        return delta

    def single_run(self, x, y, target=None):
        """One APGD run from a random start. Returns (x_adv, fooled, best_loss)."""
        loss_of = self._loss_fn(target)
        n = x.shape[0]
        period, period_min, period_decr = checkpoint_lengths(self.steps)

        delta = self._random_start(x)
        grad, logits, loss = self.input_grad(x, delta, y, self._bind(loss_of, target))
        out_delta = delta.clone()
        fooled = logits.argmax(1) != y
        best_loss_out = loss.clone()

        active = torch.arange(n, device=x.device)
        # per-active-sample state
        s = {
            "x": x, "y": y, "t": target, "delta": delta, "delta_prev": delta.clone(), "grad": grad,
            "delta_best": delta.clone(), "grad_best": grad.clone(), "loss_best": loss.clone(),
            "loss_prev": loss.clone(), "step": torch.full((n,), self.initial_step * self.eps, device=x.device),
            "n_up": torch.zeros(n, device=x.device), "loss_best_last_check": loss.clone(),
            "reduced_last_check": torch.ones(n, dtype=torch.bool, device=x.device),
        }

        def drop(keep):
            nonlocal active
            active = active[keep]
            for k, v in s.items():
                if v is not None:
                    s[k] = v[keep]

        if fooled.any():
            drop(~fooled)
        since_check = 0
        self.checkpoint_iters = []
        for i in range(self.steps):
            if active.numel() == 0:
                break
            xa, delta = s["x"], s["delta"]
            # projected gradient step z, then the momentum combination, projected
            z = self._step_per_sample_(delta.clone(), s["grad"], xa, s["step"])
            a = self.momentum if i > 0 else 1.0
            new = delta + a * (z - delta) + (1.0 - a) * (delta - s["delta_prev"])
            self.step_(new, torch.zeros_like(new), xa, 0.0)
            s["delta_prev"], s["delta"] = delta, new

            grad, logits, loss = self.input_grad(xa, new, s["y"], self._bind(loss_of, s["t"]))
            s["grad"] = grad
            s["n_up"] += (loss > s["loss_prev"]).float()
            s["loss_prev"] = loss
            better = loss > s["loss_best"]
            bv = _sample_view(better, new)
            s["delta_best"] = torch.where(bv, new, s["delta_best"])
            s["grad_best"] = torch.where(bv, grad, s["grad_best"])
            s["loss_best"] = torch.where(better, loss, s["loss_best"])
            best_loss_out[active] = s["loss_best"]

            since_check += 1
            if since_check == period:
                self._checkpoint_(s, period)
                since_check = 0
                period = max(period - period_decr, period_min)
                self.checkpoint_iters.append(i + 1)

            now_fooled = logits.argmax(1) != s["y"]
            if now_fooled.any():
                idx = active[now_fooled]
                out_delta[idx] = new[now_fooled]
                fooled[idx] = True
                drop(~now_fooled)

        if active.numel():
            out_delta[active] = s["delta_best"]
        self.final_step_sizes = s["step"]
        return (x + out_delta).detach(), fooled, best_loss_out

    def _checkpoint_(self, s: dict, period: int) -> None:
        """At a checkpoint: halve the step of (and restart from its best point) every sample that
        raised its loss on fewer than rho of the last ``period`` steps, or whose step was not
        halved last time and whose best loss has not improved since."""
        few_up = s["n_up"] < self.rho * period
        stalled = ~s["reduced_last_check"] & (s["loss_best_last_check"] >= s["loss_best"])
        halve = few_up | stalled
        s["reduced_last_check"] = halve
        s["loss_best_last_check"] = s["loss_best"].clone()
        s["step"] = torch.where(halve, s["step"] / 2, s["step"])
        hv = _sample_view(halve, s["delta"])
        s["delta"] = torch.where(hv, s["delta_best"], s["delta"])
        s["grad"] = torch.where(hv, s["grad_best"], s["grad"])
        s["n_up"] = torch.zeros_like(s["n_up"])

    @staticmethod
    def _bind(loss_of, target):
        if target is None:
            return loss_of
        return lambda logits, y: loss_of(logits, y, target)

    def _run_restarts(self, x, y, adv, fooled, best_loss, target=None):
        """Restarts on the samples not yet fooled; updates adv/fooled/best_loss in place."""
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t = None if target is None else target[idx]
            adv_r, fooled_r, loss_r = self.single_run(x[idx], y[idx], t)
            take = fooled_r | (loss_r > best_loss[idx])
            adv[idx[take]] = adv_r[take]
            best_loss[idx[take]] = loss_r[take]
            fooled[idx[fooled_r]] = True

    def forward(self, x, y):
        x = x.detach().float()
        with torch.no_grad():
            logits = self.model(x)
        self._check_classes(logits.shape[1])
        adv = x.clone()
        if self.eps == 0:
            return adv
        fooled = logits.argmax(1) != y
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        self._attack(x, y, logits, adv, fooled, best_loss)
        return adv

    def _attack(self, x, y, clean_logits, adv, fooled, best_loss):
        """The runs after the clean pass (eps > 0); update adv/fooled/best_loss in place."""
        self._run_restarts(x, y, adv, fooled, best_loss)


class APGDT(APGD):
    """Targeted APGD on the DLR-T loss, run once per target: the 2nd, 3rd, ...
    (``n_target_classes`` + 1)-th highest clean logit, each on the samples still not fooled.
    Success is untargeted (any misclassification), as in AutoAttack."""

    def __init__(self, model, eps, norm="Linf", steps=100, restarts=1, n_target_classes=9, rho=0.75, momentum=0.75,
                 initial_step=2.0, lo=0.0, hi=1.0, generator=None):
        super().__init__(model, eps, norm, steps, restarts, "dlr", rho, momentum, initial_step, lo, hi, generator)
        if n_target_classes < 1:
            raise ValueError(f"APGD-T n_target_classes must be >= 1 (got {n_target_classes})")
        self.n_target_classes = int(n_target_classes)

    def _loss_fn(self, target):
        return dlr_targeted_loss

    def _check_classes(self, num_classes: int) -> None:
        if num_classes < 4:
            raise ValueError(f"targeted DLR needs at least 4 classes (model has {num_classes}); use APGD with loss='ce'")
        if self.n_target_classes > num_classes - 1:
            raise ValueError(f"APGD-T n_target_classes={self.n_target_classes} but the model has only "
                             f"{num_classes - 1} other classes; pass n_target_classes <= {num_classes - 1}")

    def _attack(self, x, y, clean_logits, adv, fooled, best_loss):
        ranked = clean_logits.argsort(dim=1, descending=True)
        for k in range(1, self.n_target_classes + 1):
            # losses towards different targets are not comparable, so the running best restarts
            # per target (a sample never fooled ends at the last target's highest-loss point)
            best_loss.fill_(-float("inf"))
            self._run_restarts(x, y, adv, fooled, best_loss, target=ranked[:, k])
