"""RRM - Robust Representation Matching (Vaishnavi, Eykholt & Rahmati, USENIX Security 2022),
and this project's variant of it, which is the default.

The paper's RRM (``--student-delta none --feature-loss auto``): the student sees clean inputs
only and matches the frozen robust teacher's penultimate features:
  L_inf:  L = xent_weight * CE(S(x), y) - feat_weight * mean_i cos(phi_S(x)_i, phi_T(x)_i)
  L2:     L = xent_weight * CE(S(x), y) + feat_weight * mean_i ||phi_S - phi_T|| / ||phi_T||

This project's variant (the defaults; NOT the paper's method): under L_inf the student and
the teacher see x + delta_i, where delta_i is the image's own perturbation kept across
epochs and moved by one signed step of eps per visit along the student's input gradient from
the training backward (no extra pass; methods/student_delta.py), and the feature term is
rel_l2, which matches phi's size as well as its direction:
  L = xent_weight * CE(S(x+d), y) + feat_weight * mean_i ||phi_S(x+d)_i - phi_T(x+d)_i|| / ||phi_T(x+d)_i||
Honest held-out robust accuracy of the demo's student: paper RRM 0.62-0.80 of its teacher's, the
variant ~0.98 (docs/transfer.md has the study, its rows and how each was measured).

Options beyond the paper, for the study's levers: ``student_delta`` uniform / gaussian (fresh
noise each step instead of the kept delta), ``delta_target`` clean (the teacher sees x, not
x + delta), ``norm_weight`` (a term matching ||phi_S|| / ||phi_T|| to 1). With
``feat_weight 0`` (and no norm term) the teacher's features play no part: CE on x + delta
alone, the study's "no teacher" ablation.

The loss is the public ``rrm_fast.RRMLoss`` (its feature term runs through
rrm_fast.ops.feature_matching_loss, the fused Triton kernel on CUDA). One teacher forward (no
gradient) and one student forward/backward per step.
"""
import math

import torch

from .. import ops
from ..losses import RRMLoss
from .base import NON_NEGATIVE, POSITIVE, Method, Option, StepOutput, register
from .student_delta import PerImageDelta

DELTAS = ("auto", "none", "uniform", "gaussian", "per_image")
BANK_LIMIT_BYTES = 8 << 30  # a per-image bank beyond this is a dataset the method was not designed for


def resolve_delta(student_delta: str, norm: str) -> str:
    """auto: the per-image delta under L_inf (this project's default), none under L2 (the paper's)."""
    if student_delta == "auto":
        return "per_image" if norm == "Linf" else "none"
    return student_delta


@register
class RRM(Method):
    name = "rrm"
    paper = "Vaishnavi, Eykholt & Rahmati, Transferring Adversarial Robustness Through Robust Representation Matching (USENIX Security 2022)"
    needs_teacher = True
    teacher_outputs = frozenset({"features"})
    options = {
        "xent_weight": Option(0.005, "lambda_x, weight of the student's CE term", bounds=NON_NEGATIVE),
        "feat_weight": Option(1.0, "lambda_f, weight of the feature-matching term", bounds=NON_NEGATIVE),
        "feature_loss": Option("rel_l2", "feature term: rel_l2 (default; ||phi_S - phi_T|| / ||phi_T||), cosine, "
                                         "normalized_l2, or auto = the paper's (cosine for Linf, rel_l2 for L2)", str,
                               choices=("auto", "cosine", "rel_l2", "normalized_l2")),
        "norm_weight": Option(0.0, "weight of (||phi_S|| / ||phi_T|| - 1)^2 (this project's; 0 = off)",
                              bounds=NON_NEGATIVE),
        "student_delta": Option("auto", "what the student's input is: per_image = x + its image's own delta, moved by the "
                                        "student's input gradient each visit (this project's variant); none = clean x "
                                        "(the paper's); uniform / gaussian = fresh noise each step; auto = per_image for "
                                        "Linf, none for L2", str, choices=DELTAS),
        "delta_step": Option(1.0, "per_image: signed step per visit, as a multiple of eps", bounds=POSITIVE),
        "delta_init": Option("uniform", "per_image: start of each delta, U(-eps, eps) or 0", str,
                             choices=("uniform", "zero")),
        "delta_target": Option("perturbed", "the teacher's input when the student's is perturbed: perturbed (x + delta) "
                                            "or clean (x)", str, choices=("perturbed", "clean")),
    }

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.feature_loss == "auto":
            self.feature_loss = "cosine" if self.threat.norm == "Linf" else "rel_l2"
        self.student_delta = resolve_delta(self.student_delta, self.threat.norm)
        conflict = norm_conflict(self.student_delta, self.threat.norm)
        if conflict:
            raise ValueError(conflict)
        self.criterion = RRMLoss(self.xent_weight, self.feat_weight, self.feature_loss, self.norm_weight)
        self.uses_features = self.feat_weight > 0 or self.norm_weight > 0
        self.needs_sample_index = self.student_delta == "per_image"
        self.bank = PerImageDelta(self.threat.eps, self.delta_step, self.delta_init) if self.needs_sample_index else None

    @classmethod
    def data_conflict_with(cls, options, ds, norm):
        delta = resolve_delta(options["student_delta"], norm)
        if norm_conflict(delta, norm):
            return norm_conflict(delta, norm)
        if delta != "per_image":
            return None
        if getattr(ds, "images", None) is None:
            return ("--method rrm: the per-image student delta (--student-delta per_image, the Linf default) keeps one "
                    "delta per image and cannot follow a folder dataset's random-resized crops; pass --student-delta "
                    "none (the paper's RRM) or uniform")
        size = ds.images.numel()
        if size > BANK_LIMIT_BYTES:
            return (f"--method rrm: the per-image student delta needs {size / 2**30:.1f} GiB (one int8 delta per "
                    "training image); pass --student-delta none or uniform, or train on fewer images")
        return None

    def student_input(self, x, index):
        """The student's input: x, x + its image's kept delta, or x + fresh noise."""
        kind, t = self.student_delta, self.threat
        if kind == "none":
            return x
        if kind == "per_image":
            return self.bank.perturb(x, index)
        x32 = x.float()
        with torch.no_grad():
            if kind == "uniform":
                delta = torch.empty_like(x32)
                init = ops.linf_random_init_ if t.norm == "Linf" else ops.l2_random_init_
                return x32 + init(delta, x32, t.eps)
            sigma = t.eps if t.norm == "Linf" else t.eps / math.sqrt(x[0].numel())  # E||eta|| ~ eps under L2
            return (x32 + sigma * torch.randn_like(x32)).clamp_(0.0, 1.0)

    def loss(self, x, y, index=None):
        x_in = self.student_input(x, index)
        if not self.uses_features:  # no teacher signal: CE on the student's input alone
            logits = self.train_model(x_in)
            ce = torch.nn.functional.cross_entropy(logits, y)
            return StepOutput(self.xent_weight * ce, logits, {"ce": ce.detach()})
        _, phi_t = self.teacher_forward(x if self.delta_target == "clean" else x_in.detach())
        logits, phi_s = self.train_model(x_in, return_features=True)
        loss, ce, feat = self.criterion.terms(logits, y, phi_s, phi_t)
        return StepOutput(loss, logits, {"ce": ce.detach(), self.feature_loss: feat.detach()})

    def after_backward(self):
        if self.bank is not None:
            self.bank.step()

    def state_dict(self):
        return {} if self.bank is None else self.bank.state_dict()

    def load_state_dict(self, state):
        if self.bank is None:
            super().load_state_dict(state)
        else:
            self.bank.load_state_dict(state)


def norm_conflict(delta: str, norm: str) -> str | None:
    if delta == "per_image" and norm != "Linf":
        return ("--method rrm: --student-delta per_image is defined for --norm Linf (an int8 grid of the L-inf ball); "
                "with --norm L2 pass --student-delta none (the paper's RRM) or uniform")
    return None
