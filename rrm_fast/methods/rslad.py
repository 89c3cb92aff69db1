"""RSLAD — Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma & Jiang, ICCV 2021).

    x' = argmax_{||delta|| <= eps} KL(T(x) || S(x + delta))
         teacher on the CLEAN input; the run's PGD steps/step size/norm; start x + 0.001*N(0, 1);
         the student in eval mode while the example is crafted, its mode restored after
    L  = w_adv * KL(T(x) || S(x')) + (1 - w_adv) * KL(T(x) || S(x)),   w_adv = 5/6, temperature 1

The robust teacher's soft labels replace the hard labels everywhere: there is no CE term.
One teacher forward (logits, no gradient) per step; the two student forwards of the outer
loss share one batch when the student has no BatchNorm.
"""
from .base import FRACTION, NON_NEGATIVE, Method, Option, StepOutput, register
from .distill import eval_mode, forward_pair, has_batchnorm, kl_attack, soft_kl


@register
class RSLAD(Method):
    name = "rslad"
    paper = "Zi et al., Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better (ICCV 2021)"
    needs_teacher = True
    teacher_outputs = frozenset({"logits"})
    adversarial = True
    options = {
        "rslad_adv_weight": Option(5 / 6, "weight of KL(T(x) || S(x')); the clean KL(T(x) || S(x)) gets 1 - it",
                                   bounds=FRACTION),
        "attack_start_std": Option(0.001, "std of the Gaussian start x + std*N(0,1) of the inner maximisation (rslad, trades)",
                                   bounds=NON_NEGATIVE),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.joint_forward = not has_batchnorm(self.student)

    def perturb(self, x, teacher_logits):
        """The inner maximisation: x' maximising KL(T(x) || S(x')) within the threat model."""
        with eval_mode(self.student):
            return kl_attack(self, self.attack_start_std)(x, teacher_logits)

    def loss(self, x, y):
        t_logits, _ = self.teacher_forward(x)
        x_adv = self.perturb(x, t_logits)
        logits_adv, logits_nat = forward_pair(self.train_model, x_adv, x, self.joint_forward)
        kl_adv = soft_kl(logits_adv, t_logits)
        kl_nat = soft_kl(logits_nat, t_logits)
        loss = self.rslad_adv_weight * kl_adv + (1.0 - self.rslad_adv_weight) * kl_nat
        return StepOutput(loss, logits_adv, {"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()})
