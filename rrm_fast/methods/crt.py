"""CRT — Certified Robustness Transfer (Vaishnavi, Eykholt & Rahmati, NeurIPS 2022).

    eta ~ N(0, sigma^2 I)                       (one draw shared by student and teacher, unclipped)
    L = alpha * mean_i ||S(x_i + eta_i) - T(x_i + eta_i)||_2 + (1 - alpha) * CE(S(x + eta), y)

The student matches the output logits of a teacher trained for randomized smoothing
(Gaussian augmentation, SmoothAdv, MACER, SmoothMix) on the same noisy inputs. Defaults
alpha = 1, sigma = 0.25 (also 0.5, 1.0 in the paper). One teacher forward (logits, no
gradient) per step. The whole chain runs in rrm_fast:

    python -m rrm_fast.train --method crt --teacher cnn_small --teacher-method gaussian_aug --sigma 0.25

Noise is not clipped to [0, 1], following Cohen et al. (see gaussian_aug.py).
"""
import torch
import torch.nn.functional as F

from .base import FRACTION, NON_NEGATIVE, Method, Option, StepOutput, register
from .distill import upcast
from .gaussian_aug import SIGMA_HELP, gaussian_noise_like


@register
class CRT(Method):
    name = "crt"
    paper = "Vaishnavi, Eykholt & Rahmati, Accelerating Certified Robustness Training via Knowledge Transfer (NeurIPS 2022)"
    needs_teacher = True
    teacher_outputs = frozenset({"logits"})
    options = {
        "sigma": Option(0.25, SIGMA_HELP, bounds=NON_NEGATIVE),
        "crt_alpha": Option(1.0, "weight alpha of the logit-matching L2 distance; CE on the noisy input gets 1 - alpha",
                            bounds=FRACTION),
    }

    def loss(self, x, y):
        x_noisy = gaussian_noise_like(x, self.sigma)
        t_logits, _ = self.teacher_forward(x_noisy)
        logits = self.train_model(x_noisy)
        match = torch.linalg.vector_norm(upcast(logits) - upcast(t_logits), ord=2, dim=1).mean()
        ce = F.cross_entropy(logits, y)
        loss = self.crt_alpha * match + (1.0 - self.crt_alpha) * ce
        return StepOutput(loss, logits, {"logit_l2": match.detach(), "ce_noisy": ce.detach()})
