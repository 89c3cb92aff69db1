"""RRM — Robust Representation Matching (Vaishnavi, Eykholt & Rahmati, USENIX Security 2022).

The student sees clean inputs only and matches the frozen robust teacher's penultimate
features:
  L_inf:  L = xent_weight * CE(S(x), y) - feat_weight * mean_i cos(phi_S(x)_i, phi_T(x)_i)
  L2:     L = xent_weight * CE(S(x), y) + feat_weight * mean_i ||phi_S - phi_T|| / ||phi_T||
The feature term runs through rrm_fast.ops.feature_matching_loss (the fused Triton kernel
on CUDA). One teacher forward (no gradient) and one student forward/backward per step.
"""
import torch.nn.functional as F

from .. import ops
from .base import Method, Option, StepOutput, register


@register
class RRM(Method):
    name = "rrm"
    paper = "Vaishnavi, Eykholt & Rahmati, Transferring Adversarial Robustness Through Robust Representation Matching (USENIX Security 2022)"
    needs_teacher = True
    teacher_outputs = frozenset({"features"})
    options = {
        "xent_weight": Option(0.005, "lambda_x, weight of the student's CE term"),
        "feat_weight": Option(1.0, "lambda_f, weight of the feature-matching term"),
        "feature_loss": Option("auto", "cosine | rel_l2 | normalized_l2 (auto: cosine for Linf, rel_l2 for L2)", str),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.feature_loss == "auto":
            self.feature_loss = "cosine" if self.threat.norm == "Linf" else "rel_l2"

    def loss(self, x, y):
        _, phi_t = self.teacher_forward(x)
        logits, phi_s = self.student(x, return_features=True)
        ce = F.cross_entropy(logits, y)
        feat = ops.feature_matching_loss(phi_s, phi_t, kind=self.feature_loss)
        # cosine is a similarity (maximise it); the L2 kinds are distances (minimise them)
        sign = -1.0 if self.feature_loss == "cosine" else 1.0
        loss = self.xent_weight * ce + sign * self.feat_weight * feat
        return StepOutput(loss, logits, {"ce": ce.detach(), self.feature_loss: feat.detach()})
