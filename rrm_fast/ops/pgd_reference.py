"""Plain PyTorch references for the PGD step ops.

These are the ground truth the compiled kernels (csrc/) are tested against, and the
fallback when no compiled extension loads. All ops are in place on ``delta`` and follow
the same conventions:

* ``eps, alpha, lo, hi`` are Python scalars or per-channel tensors of shape (C,)
  (broadcast over N, H, W); ``x`` and ``delta`` are (N, C, ...) tensors of one float dtype
  (float32 in use; the tests run these references in float64 as the ground truth).
* ``mask`` is an optional per-sample bool tensor (N,): True = update that sample,
  False = leave its delta untouched.
* The math runs in delta's dtype: a float16/bfloat16 ``grad`` is upcast first.
* sign(0) = 0, and an L2 step with g = 0 (or a NaN norm) leaves delta where it is
  (before projection). torch.sign(NaN) = 0, so a NaN gradient entry does not move that
  L-inf coordinate; NaN in delta or x propagates (torch.minimum/maximum/clamp do).
* Operation order (the kernels follow it): L-inf clamps to [-eps, eps] with min then max;
  the box clip is delta <- min(max(x + delta, lo), hi) - x.
* Random starts draw float32 numbers from torch's generator, in a fixed order (L2: the
  normal directions first, then one uniform radius per sample), so a seed reproduces them.
"""
from __future__ import annotations

import math

import torch


def _per_channel(v, ref: torch.Tensor) -> torch.Tensor | float:
    """A scalar, or a (C,)/0-dim tensor shaped to broadcast against an (N, C, ...) tensor."""
    if isinstance(v, torch.Tensor):
        v = v.to(device=ref.device, dtype=ref.dtype)
        if v.dim() == 0:
            return v
        return v.reshape([1, v.numel()] + [1] * (ref.dim() - 2))
    return float(v)


def _sample_view(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.reshape([ref.shape[0]] + [1] * (ref.dim() - 1))


def _minimum(t: torch.Tensor, bound) -> torch.Tensor:
    return torch.minimum(t, bound) if isinstance(bound, torch.Tensor) else t.clamp(max=bound)


def _maximum(t: torch.Tensor, bound) -> torch.Tensor:
    return torch.maximum(t, bound) if isinstance(bound, torch.Tensor) else t.clamp(min=bound)


def _clip_box(delta, x, lo, hi):
    """clip(x + delta, lo, hi) - x: max first, then min."""
    return _minimum(_maximum(x + delta, lo), hi) - x


def _commit(delta, new, mask):
    if mask is None:
        delta.copy_(new)
    else:
        delta.copy_(torch.where(_sample_view(mask.to(device=delta.device, dtype=torch.bool), delta), new, delta))
    return delta


def _as_delta_dtype(grad: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return grad.to(torch.promote_types(grad.dtype, delta.dtype))


def linf_step_ref_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- clip(delta + alpha*sign(g), -eps, eps); delta <- clip(x + delta, lo, hi) - x."""
    eps, alpha = _per_channel(eps, delta), _per_channel(alpha, delta)
    lo, hi = _per_channel(lo, delta), _per_channel(hi, delta)
    new = delta + alpha * torch.sign(_as_delta_dtype(grad, delta))
    new = _maximum(_minimum(new, eps), -eps)
    new = _clip_box(new, x, lo, hi)
    return _commit(delta, new, mask)


def _l2_norm_per_sample(t: torch.Tensor) -> torch.Tensor:
    return _sample_view(t.flatten(1).norm(p=2, dim=1), t)


def l2_step_ref_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- delta + alpha*g/||g||; project onto ||delta||_2 <= eps; clip to the box.

    ``eps`` and ``alpha`` are scalars for L2 (a per-sample radius in pixel units);
    ``lo``/``hi`` may be per-channel.
    """
    g = _as_delta_dtype(grad, delta)
    gnorm = _l2_norm_per_sample(g)
    step = torch.where(gnorm > 0, g / gnorm.clamp_min(1e-30), torch.zeros_like(g))
    new = delta + float(alpha) * step
    dnorm = _l2_norm_per_sample(new)
    factor = torch.where(dnorm > float(eps), float(eps) / dnorm.clamp_min(1e-30), torch.ones_like(dnorm))
    new = new * factor
    new = _clip_box(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    return _commit(delta, new, mask)


def linf_random_init_ref_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta ~ U(-eps, eps) elementwise, then clipped so x + delta stays in the box."""
    u = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32).to(delta.dtype)
    new = (2.0 * u - 1.0) * _per_channel(eps, delta)
    new = _clip_box(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    delta.copy_(new)
    return delta


def l2_random_init_ref_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta uniform in the L2 ball of radius eps (direction ~ N(0,I), radius ~ eps*U^(1/d)),
    then clipped to the box."""
    n = delta.shape[0]
    d = max(1, math.prod(delta.shape[1:]))
    g = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
    r = torch.rand((n,), generator=generator, device=delta.device, dtype=torch.float32).pow(1.0 / d)
    g, r = g.to(delta.dtype), r.to(delta.dtype)
    g = g / _l2_norm_per_sample(g).clamp_min(1e-30)
    new = g * _sample_view(r, delta) * float(eps)
    new = _clip_box(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    delta.copy_(new)
    return delta


__all__ = ["linf_step_ref_", "l2_step_ref_", "linf_random_init_ref_", "l2_random_init_ref_"]
