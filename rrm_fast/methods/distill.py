"""Pieces the peer methods share: the soft-label KL, option checks, the student's eval mode
during an attack, and PGD started from x + 0.001*N(0, 1) (TRADES, RSLAD).

KL convention. ``soft_kl(s, t)`` is KL(softmax(t/tau) || softmax(s/tau)): the teacher (or
target) distribution comes first, the model being trained second. This is what the papers'
code computes with ``nn.KLDivLoss()(log_softmax(s/tau), softmax(t/tau))``; METHODS.md writes
KD/ARD/KDIGA in KLDivLoss's (input, target) order, KL(S/tau || T/tau), and RSLAD/TRADES in
math order, KL(T || S) -- all the same quantity. It is reduced as a per-sample sum over
classes averaged over the batch ("batchmean", the true mean KL). The RSLAD and ARD reference
code averages over batch*classes instead, which is this value divided by the number of
classes: a constant rescaling of the learning rate, not a different objective.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..attacks import PGD


def upcast(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 (autocast) -> fp32 for softmax/log arithmetic; fp32 and fp64 pass unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(teacher/tau) || softmax(student/tau)); "batchmean" (scalar) or "none" (per sample).

    Gradients flow into whichever argument requires them (TRADES lets both sides learn);
    pass a detached / no-grad teacher to train the student only.
    """
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(upcast(teacher_logits) / temperature, dim=1)
    # from log-probabilities on both sides: no 0*log(0) for saturated teachers at tau = 1
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    raise ValueError(f"soft_kl reduction must be 'batchmean' or 'none' (got {reduction!r})")


def distill_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Hinton's temperature-scaled distillation term tau^2 * KL(T/tau || S/tau): the tau^2 keeps
    the gradient's size independent of tau."""
    return temperature * temperature * soft_kl(student_logits, teacher_logits, temperature)


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, its previous train/eval mode restored after
    (RSLAD and TRADES craft their examples with BatchNorm/Dropout in inference behaviour)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def has_batchnorm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def forward_pair(model, a, b, joint: bool):
    """model(a), model(b). With ``joint`` they go through one forward of the concatenated batch,
    which is the same result for models without batch statistics and one launch sequence
    instead of two; models with BatchNorm get two forwards so each batch keeps its own
    statistics, as the papers' code does."""
    if not joint:
        return model(a), model(b)
    out = model(torch.cat([a, b]))
    return out[:a.shape[0]], out[a.shape[0]:]


class GaussianStartPGD(PGD):
    """PGD whose start is x + start_std * N(0, 1) (TRADES, RSLAD) instead of a uniform draw in
    the ball. The start is projected into the eps-ball and the [lo, hi] box by the same step
    op the iterations use (a zero-gradient step moves nothing and only projects)."""

    def __init__(self, *args, start_std: float = 0.001, **kw):
        super().__init__(*args, **kw)
        self.start_std = float(start_std)

    def random_init_(self, delta, x, generator=None):
        noise = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
        delta.copy_(noise.mul_(self.start_std))
        return self.step_(delta, torch.zeros_like(delta), x, 0.0)


def kl_per_sample(logits, target_logits):
    """PGD objective for TRADES/RSLAD: per-sample KL(softmax(target) || softmax(logits))."""
    return soft_kl(logits, target_logits, reduction="none")


def kl_attack(method, start_std: float = 0.001) -> GaussianStartPGD:
    """The run's threat model (eps, step, steps, norm) maximising KL(target || S(x + delta)),
    started at x + start_std * N(0, 1). Call it as ``attack(x, target_logits)``."""
    t = method.threat
    return GaussianStartPGD(method.student, eps=t.eps, alpha=t.step_size, steps=t.steps, norm=t.norm,
                            loss_fn=kl_per_sample, start_std=start_std)
