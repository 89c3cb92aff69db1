"""Plain PyTorch reference for the feature-matching losses (RRM's feature term).

Per row i of S, T (B x D):
  cosine:        l_i = s·t / (max(||s||, eps) · max(||t||, eps))   (F.cosine_similarity)
  rel_l2:        l_i = ||s - t||_2 / max(||t||_2, eps)
  normalized_l2: l_i = || s/max(||s||,eps) - t/max(||t||,eps) ||_2^2
Cosine is F.cosine_similarity itself: since torch 1.12 it clamps each norm separately (not their
product) and does the clamp under no_grad, so autograd differentiates the unclamped norm. A zero
row gives cos = 0 and the finite gradient t / (eps·||t||). The fused Triton kernel
(kernels/feature_matching.py) reproduces exactly these values and autograd gradients, and is
tested against this file in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("cosine", "rel_l2", "normalized_l2")
EPS = 1e-6


def feature_matching_rows_ref(s: torch.Tensor, t: torch.Tensor, kind: str = "cosine", eps: float = EPS) -> torch.Tensor:
    """Per-row loss term (B,), computed in float32 (or float64 if inputs are float64)."""
    if kind not in KINDS:
        raise ValueError(f"unknown feature-matching kind {kind!r}; choose one of {KINDS}")
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    s, t = s.to(acc), t.to(acc)
    if kind == "cosine":
        return F.cosine_similarity(s, t, dim=1, eps=eps)
    if kind == "rel_l2":
        return (s - t).norm(dim=1) / t.norm(dim=1).clamp_min(eps)
    sn = s / s.norm(dim=1, keepdim=True).clamp_min(eps)
    tn = t / t.norm(dim=1, keepdim=True).clamp_min(eps)
    return (sn - tn).pow(2).sum(dim=1)


def reduce_rows(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    if reduction == "none":
        return rows
    raise ValueError(f"unknown reduction {reduction!r}; choose 'mean', 'sum' or 'none'")


def feature_matching_loss_ref(s, t, kind="cosine", reduction="mean", eps: float = EPS):
    return reduce_rows(feature_matching_rows_ref(s, t, kind, eps), reduction)
