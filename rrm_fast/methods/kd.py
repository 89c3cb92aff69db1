"""KD — knowledge distillation (Hinton, Vinyals & Dean, 2015), the RRM paper's KD baseline.

    L = alpha * tau^2 * KL(T(x)/tau || S(x)/tau) + (1 - alpha) * CE(S(x), y)

Clean inputs only; one teacher forward (logits, no gradient) and one student forward per
step. Defaults tau = 30, alpha = 1 are the RRM paper's KD baseline (METHODS.md).
"""
import torch.nn.functional as F

from .base import FRACTION, POSITIVE, Method, Option, StepOutput, register
from .distill import distill_kl

# shared by kd, ard and kdiga (one --kd-temp / --kd-alpha flag each, per-method defaults)
KD_TEMP_HELP = "distillation temperature tau (kd, ard: 30; kdiga: 1)"
KD_ALPHA_HELP = "weight alpha of the distillation KL; CE gets 1 - alpha (kd, ard: 1; kdiga: 0.5)"


@register
class KD(Method):
    name = "kd"
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network (2015)"
    needs_teacher = True
    teacher_outputs = frozenset({"logits"})
    options = {
        "kd_temp": Option(30.0, KD_TEMP_HELP, bounds=POSITIVE),
        "kd_alpha": Option(1.0, KD_ALPHA_HELP, bounds=FRACTION),
    }

    def loss(self, x, y):
        t_logits, _ = self.teacher_forward(x)
        logits = self.train_model(x)
        kd = distill_kl(logits, t_logits, self.kd_temp)
        ce = F.cross_entropy(logits, y)
        loss = self.kd_alpha * kd + (1.0 - self.kd_alpha) * ce
        return StepOutput(loss, logits, {"kd": kd.detach(), "ce": ce.detach()})
