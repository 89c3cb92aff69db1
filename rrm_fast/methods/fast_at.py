"""Fast AT / FGSM-RS (Wong, Rice & Kolter, ICLR 2020).

delta0 ~ U(-eps, eps), one signed step of alpha = 1.25 eps, clip to ball and box, CE on the
result. FGSM training can collapse ("catastrophic overfitting": FGSM accuracy high, PGD
accuracy ~0); the trainer's per-epoch PGD check on the held-out train slice catches it
and restores the last good weights (the ``early_stop`` policy below). Wong et al. train it
with a cyclic learning rate, which ``--schedule auto`` picks.
"""
import torch.nn.functional as F

from ..attacks import FGSM
from .base import POSITIVE, Method, Option, RobustDropStop, StepOutput, register


@register
class FastAT(Method):
    name = "fast_at"
    paper = "Wong, Rice & Kolter, Fast is better than free (ICLR 2020)"
    adversarial = True
    options = {"fgsm_alpha_ratio": Option(1.25, "FGSM step as a multiple of eps", bounds=POSITIVE)}
    default_schedule = "cyclic"
    # stop and restore the best weights when held-out PGD accuracy falls this far below its best
    early_stop = RobustDropStop(0.2)

    def loss(self, x, y):
        t = self.threat
        x_adv = FGSM(self.student, eps=t.eps, alpha=self.fgsm_alpha_ratio * t.eps, norm=t.norm)(x, y)
        logits = self.train_model(x_adv)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, logits, {"ce_adv": loss.detach()})
