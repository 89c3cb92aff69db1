"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter, ICML 2019): the base classifier of
a randomized-smoothing model, and CRT's default teacher.

    L = CE(f(x + eta), y),   eta ~ N(0, sigma^2 I),  a fresh draw per sample and step

The noisy input is NOT clipped to [0, 1]: Cohen et al. add the noise to the image and feed
it as is, and the smoothed classifier's certificate is for exactly that noise (a clipped
sample is no longer Gaussian around x). Certify the result with randomized smoothing at the
same sigma; its PGD accuracy is the base classifier's, not the smoothed model's.
"""
import torch
import torch.nn.functional as F

from .base import NON_NEGATIVE, Method, Option, StepOutput, register

SIGMA_HELP = "std sigma of the Gaussian input noise x + N(0, sigma^2), unclipped (gaussian_aug, crt)"


def gaussian_noise_like(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x + sigma * N(0, I), not clipped (Cohen et al.)."""
    return x + sigma * torch.randn_like(x)


@register
class GaussianAug(Method):
    name = "gaussian_aug"
    paper = "Cohen, Rosenfeld & Kolter, Certified Adversarial Robustness via Randomized Smoothing (ICML 2019)"
    options = {"sigma": Option(0.25, SIGMA_HELP, bounds=NON_NEGATIVE)}

    def loss(self, x, y):
        x_noisy = gaussian_noise_like(x, self.sigma)
        logits = self.train_model(x_noisy)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, logits, {"ce_noisy": loss.detach()})
