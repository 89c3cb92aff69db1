"""Public losses: ``RRMLoss``, the Robust Representation Matching objective as an nn.Module.

    L = xent_weight * CE(student_logits, labels) - feat_weight * mean_i cos(phi_S(x_i), phi_T(x_i))   (kind="cosine")
    L = xent_weight * CE(student_logits, labels) + feat_weight * mean_i dist(phi_S(x_i), phi_T(x_i))  (rel_l2, normalized_l2)
      [+ norm_weight * mean_i (||phi_S(x_i)|| / ||phi_T(x_i)|| - 1)^2]

Cosine is a similarity, so it enters with a minus sign; the L2 kinds are distances. The feature
term runs through ``rrm_fast.feature_matching_loss`` (fused Triton kernel on CUDA tensors).
The norm term (this project's, off by default) matches the size of phi that cosine leaves
free; rel_l2 matches direction and size at once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import feature_matching_loss
from .ops.feature_matching_reference import KINDS

SIMILARITY_KINDS = ("cosine",)


class RRMLoss(nn.Module):
    """Cross-entropy on the student's logits plus the feature-matching term against a teacher.

    forward(student_logits (B, C), labels (B,), student_features (B, D), teacher_features (B, D))
    returns a scalar. Compute the teacher's features under ``torch.no_grad()`` (a frozen
    teacher, as RRM does): the loss then never computes a teacher gradient. Teacher features
    that require grad get one, and it flows back into the teacher.
    """

    def __init__(self, xent_weight: float = 0.005, feat_weight: float = 1.0, kind: str = "cosine",
                 norm_weight: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown feature-matching kind {kind!r}; choose one of {KINDS}")
        for name, w in (("xent_weight", xent_weight), ("feat_weight", feat_weight), ("norm_weight", norm_weight)):
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                raise ValueError(f"{name} must be a non-negative number, got {w!r}")
        self.xent_weight = float(xent_weight)
        self.feat_weight = float(feat_weight)
        self.norm_weight = float(norm_weight)
        self.kind = kind
        self.feat_sign = -1.0 if kind in SIMILARITY_KINDS else 1.0

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor,
                student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return self.terms(student_logits, labels, student_features, teacher_features)[0]

    def terms(self, student_logits: torch.Tensor, labels: torch.Tensor, student_features: torch.Tensor,
              teacher_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, CE term, feature term): the loss as ``forward`` returns it, and its two
        unweighted terms (for logging; the trainer's RRM method reports them)."""
        if student_logits.shape[0] != student_features.shape[0]:
            raise ValueError(
                f"student_logits has {student_logits.shape[0]} rows but student_features has "
                f"{student_features.shape[0]}; pass logits and features of the same batch"
            )
        xent = F.cross_entropy(student_logits, labels)
        feat = feature_matching_loss(student_features, teacher_features, kind=self.kind, reduction="mean")
        loss = self.xent_weight * xent + (self.feat_sign * self.feat_weight) * feat
        if self.norm_weight:
            loss = loss + self.norm_weight * norm_ratio_loss(student_features, teacher_features)
        return loss, xent, feat

    def extra_repr(self) -> str:
        extra = f", norm_weight={self.norm_weight}" if self.norm_weight else ""
        return f"xent_weight={self.xent_weight}, feat_weight={self.feat_weight}, kind={self.kind!r}{extra}"


def norm_ratio_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean_i (||phi_S_i|| / max(||phi_T_i||, eps) - 1)^2, in float32 (float64 stays float64)."""
    acc = torch.float64 if student_features.dtype == torch.float64 else torch.float32
    s, t = student_features.to(acc), teacher_features.to(acc)
    return (s.norm(dim=1) / t.norm(dim=1).clamp_min(eps) - 1).pow(2).mean()
