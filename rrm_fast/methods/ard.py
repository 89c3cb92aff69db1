"""ARD — Adversarially Robust Distillation (Goldblum, Fowl, Feizi & Goldstein, AAAI 2020).

    x' = PGD on CE(S(x'), y)    (the run's threat model, uniform random start, the student's
                                 train/eval mode left as the trainer set it, as in ARD's code)
    L  = alpha * tau^2 * KL(T(x)/tau || S(x')/tau) + (1 - alpha) * CE(S(x), y)

The teacher sees the clean input. Defaults tau = 30, alpha = 1 (the RRM paper's ARD
baseline, METHODS.md); with alpha = 1 the clean CE term has weight 0 and its student
forward is skipped.
"""
import torch.nn.functional as F

from .base import StepOutput, register
from .distill import distill_kl, forward_pair, has_batchnorm
from .kd import KD


@register
class ARD(KD):
    """KD's options, defaults and their checks; the distilled student output is adversarial."""
    name = "ard"
    paper = "Goldblum et al., Adversarially Robust Distillation (AAAI 2020)"
    adversarial = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.joint_forward = not has_batchnorm(self.student)

    def perturb(self, x, y):
        return self.attack()(x, y)

    def loss(self, x, y):
        t_logits, _ = self.teacher_forward(x)
        x_adv = self.perturb(x, y)
        parts = {}
        if self.kd_alpha < 1.0:
            logits_adv, logits_nat = forward_pair(self.train_model, x_adv, x, self.joint_forward)
            ce = F.cross_entropy(logits_nat, y)
            parts["ce"] = ce.detach()
        else:
            logits_adv, ce = self.train_model(x_adv), 0.0
        kd = distill_kl(logits_adv, t_logits, self.kd_temp)
        parts["kd_adv"] = kd.detach()
        loss = self.kd_alpha * kd + (1.0 - self.kd_alpha) * ce
        return StepOutput(loss, logits_adv, parts)
