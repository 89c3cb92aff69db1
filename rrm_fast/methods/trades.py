"""TRADES (Zhang et al., ICML 2019).

    x' = argmax_{||delta|| <= eps} KL(f(x) || f(x + delta))
         the run's PGD steps/step size/norm; start x + 0.001*N(0, 1); the model in eval mode
         while the example is crafted, its mode restored after (as TRADES' code does)
    L  = CE(f(x), y) + beta * KL(f(x) || f(x')),   beta = 6

The outer KL is differentiated through both f(x) and f(x') (TRADES does not detach f(x)).
No teacher. The two forwards of the outer loss share one batch when the model has no
BatchNorm.
"""
import torch
import torch.nn.functional as F

from .base import NON_NEGATIVE, Method, Option, StepOutput, register
from .distill import eval_mode, forward_pair, has_batchnorm, kl_attack, soft_kl


@register
class TRADES(Method):
    name = "trades"
    paper = "Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy (ICML 2019)"
    adversarial = True
    options = {
        "trades_beta": Option(6.0, "beta, weight of the robustness KL(f(x) || f(x'))", bounds=NON_NEGATIVE),
        "attack_start_std": Option(0.001, "std of the Gaussian start x + std*N(0,1) of the inner maximisation (rslad, trades)",
                                   bounds=NON_NEGATIVE),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.joint_forward = not has_batchnorm(self.student)

    def perturb(self, x):
        """The inner maximisation: x' maximising KL(f(x) || f(x')) within the threat model."""
        with eval_mode(self.student):
            with torch.no_grad():
                target = self.student(x)
            return kl_attack(self, self.attack_start_std)(x, target)

    def loss(self, x, y):
        x_adv = self.perturb(x)
        logits_nat, logits_adv = forward_pair(self.train_model, x, x_adv, self.joint_forward)
        ce = F.cross_entropy(logits_nat, y)
        kl = soft_kl(logits_adv, logits_nat)
        loss = ce + self.trades_beta * kl
        return StepOutput(loss, logits_nat, {"ce": ce.detach(), "kl_adv": kl.detach()})
