"""RRM — Robust Representation Matching (Vaishnavi, Eykholt & Rahmati, USENIX Security 2022).

The student sees clean inputs only and matches the frozen robust teacher's penultimate
features:
  L_inf:  L = xent_weight * CE(S(x), y) - feat_weight * mean_i cos(phi_S(x)_i, phi_T(x)_i)
  L2:     L = xent_weight * CE(S(x), y) + feat_weight * mean_i ||phi_S - phi_T|| / ||phi_T||
The loss is the public ``rrm_fast.RRMLoss`` (its feature term runs through
rrm_fast.ops.feature_matching_loss, the fused Triton kernel on CUDA), so the trainer runs the
module users import. One teacher forward (no gradient) and one student forward/backward per step.
"""
from ..losses import RRMLoss
from .base import NON_NEGATIVE, Method, Option, StepOutput, register


@register
class RRM(Method):
    name = "rrm"
    paper = "Vaishnavi, Eykholt & Rahmati, Transferring Adversarial Robustness Through Robust Representation Matching (USENIX Security 2022)"
    needs_teacher = True
    teacher_outputs = frozenset({"features"})
    options = {
        "xent_weight": Option(0.005, "lambda_x, weight of the student's CE term", bounds=NON_NEGATIVE),
        "feat_weight": Option(1.0, "lambda_f, weight of the feature-matching term", bounds=NON_NEGATIVE),
        "feature_loss": Option("auto", "auto: cosine for Linf, rel_l2 for L2", str,
                               choices=("auto", "cosine", "rel_l2", "normalized_l2")),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.feature_loss == "auto":
            self.feature_loss = "cosine" if self.threat.norm == "Linf" else "rel_l2"
        self.criterion = RRMLoss(self.xent_weight, self.feat_weight, self.feature_loss)

    def loss(self, x, y):
        _, phi_t = self.teacher_forward(x)
        logits, phi_s = self.train_model(x, return_features=True)
        loss, ce, feat = self.criterion.terms(logits, y, phi_s, phi_t)
        return StepOutput(loss, logits, {"ce": ce.detach(), self.feature_loss: feat.detach()})
