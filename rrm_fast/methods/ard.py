"""ARD — Adversarially Robust Distillation (Goldblum, Fowl, Feizi & Goldstein, AAAI 2020).

    x' = PGD on CE(S(x'), y)    (the run's threat model, uniform random start, the student's
                                 train/eval mode left as the trainer set it, as in ARD's code)
    L  = alpha * tau^2 * KL(T(x)/tau || S(x')/tau) + (1 - alpha) * CE(S(x), y)

The teacher sees the clean input. Defaults tau = 30, alpha = 1 (the RRM paper's ARD
baseline, METHODS.md); with alpha = 1 the clean CE term has weight 0 and its student
forward is skipped.
"""
import torch.nn.functional as F

from .base import Method, Option, StepOutput, register
from .distill import check_range, distill_kl, forward_pair, has_batchnorm
from .kd import KD_ALPHA_HELP, KD_TEMP_HELP


@register
class ARD(Method):
    name = "ard"
    paper = "Goldblum et al., Adversarially Robust Distillation (AAAI 2020)"
    needs_teacher = True
    teacher_outputs = frozenset({"logits"})
    adversarial = True
    options = {
        "kd_temp": Option(30.0, KD_TEMP_HELP),
        "kd_alpha": Option(1.0, KD_ALPHA_HELP),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        check_range(self.name, "kd_temp", self.kd_temp, 0.0, lo_open=True)
        check_range(self.name, "kd_alpha", self.kd_alpha, 0.0, 1.0)
        self.joint_forward = not has_batchnorm(self.student)

    def perturb(self, x, y):
        return self.attack()(x, y)

    def loss(self, x, y):
        t_logits, _ = self.teacher_forward(x)
        x_adv = self.perturb(x, y)
        parts = {}
        if self.kd_alpha < 1.0:
            logits_adv, logits_nat = forward_pair(self.student, x_adv, x, self.joint_forward)
            ce = F.cross_entropy(logits_nat, y)
            parts["ce"] = ce.detach()
        else:
            logits_adv, ce = self.student(x_adv), 0.0
        kd = distill_kl(logits_adv, t_logits, self.kd_temp)
        parts["kd_adv"] = kd.detach()
        loss = self.kd_alpha * kd + (1.0 - self.kd_alpha) * ce
        return StepOutput(loss, logits_adv, parts)
