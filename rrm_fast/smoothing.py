"""Randomized smoothing (Cohen, Rosenfeld, Kolter; ICML 2019): PREDICT and CERTIFY.

The smoothed classifier g(x) = argmax_c P(f(x + eta) = c), eta ~ N(0, sigma^2 I), added in
pixel space ([0, 1] images; the model normalises inside, so sigma is in pixel units and the
noisy input is not clipped, as in the paper). CERTIFY:

1. draw n0 noisy copies, take the most frequent class cA (selection);
2. draw n fresh copies, count nA = #{f(x + eta) = cA} (estimation);
3. pA_lower = one-sided (1 - alpha) Clopper-Pearson lower bound on P(f(x + eta) = cA);
4. pA_lower <= 1/2: abstain; else return cA with L2 radius sigma * Phi^-1(pA_lower).

With probability >= 1 - alpha over the noise, a returned cA is g's prediction at every x'
with ||x' - x||_2 < radius. PREDICT returns the top class of n samples only if a two-sided
binomial test of nA vs nB at 1/2 rejects at level alpha, else abstains.

Certified accuracy at radius r = fraction of samples with (prediction == label and radius >= r);
ACR = mean over samples of (radius if correct else 0).
"""
from __future__ import annotations

import torch
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion,
    i.e. the alpha-quantile of Beta(k, n - k + 1) (0 when k = 0)."""
    if n < 1:
        raise ValueError(f"Clopper-Pearson needs n >= 1 samples (got {n})")
    if not 0 <= k <= n:
        raise ValueError(f"success count k={k} must be in [0, n={n}]")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


class Smooth:
    """A Gaussian-smoothed classifier around ``model`` (a [0,1]-image -> logits module)."""

    def __init__(self, model, num_classes: int, sigma: float):
        if sigma <= 0:
            raise ValueError(f"smoothing sigma must be > 0 (got {sigma}); use the noise level the model was trained with, e.g. 0.25")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {num_classes})")
        self.model = model
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, generator=None) -> torch.Tensor:
        """Class counts of f(x + eta) over ``num`` noise draws, for one image x of shape (C, H, W)."""
        if x.dim() != 3:
            raise ValueError(f"Smooth works on one image (C, H, W) at a time, got shape {tuple(x.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        x = x.float()
        remaining = int(num)
        with torch.no_grad():
            while remaining > 0:
                b = min(batch_size, remaining)
                noise = torch.randn((b, *x.shape), generator=generator, device=x.device, dtype=torch.float32)
                pred = self.model(x.unsqueeze(0) + self.sigma * noise).argmax(1)
                counts += torch.bincount(pred, minlength=self.num_classes)
                remaining -= b
        return counts.cpu()

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000, generator=None) -> int:
        """The smoothed prediction, or ABSTAIN when the top two classes are not separated at level alpha."""
        counts = self.sample_counts(x, n, batch_size, generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 1000,
                generator=None) -> tuple[int, float]:
        """(class, L2 radius), or (ABSTAIN, 0.0)."""
        if n0 < 1 or n < 1:
            raise ValueError(f"CERTIFY needs n0 >= 1 and n >= 1 noise samples (got n0={n0}, n={n})")
        c_a = int(self.sample_counts(x, n0, batch_size, generator).argmax())
        n_a = int(self.sample_counts(x, n, batch_size, generator)[c_a])
        p_a = clopper_pearson_lower(n_a, n, alpha)
        if p_a <= 0.5:
            return ABSTAIN, 0.0
        return c_a, self.sigma * float(norm.ppf(p_a))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples (all n agree): sigma * Phi^-1(alpha^(1/n))."""
    return sigma * float(norm.ppf(clopper_pearson_lower(n, n, alpha)))


def summarize_certification(labels, predictions, radii_found, radii=DEFAULT_RADII) -> dict:
    """Certified accuracy at each radius and the average certified radius (ACR)."""
    n = len(labels)
    if n == 0:
        raise ValueError("no certified samples to summarise")
    correct = [int(p) == int(t) for p, t in zip(predictions, labels)]
    acc = {f"{r:g}": sum(1 for c, rad in zip(correct, radii_found) if c and rad >= r) / n for r in radii}
    acr = sum(rad for c, rad in zip(correct, radii_found) if c) / n
    abstained = sum(1 for p in predictions if int(p) == ABSTAIN)
    return {"n": n, "certified_acc": acc, "acr": acr, "abstain_rate": abstained / n}


__all__ = ["ABSTAIN", "DEFAULT_RADII", "Smooth", "clopper_pearson_lower", "max_certifiable_radius",
           "summarize_certification"]
