"""Plain PyTorch references for the PGD step ops.

These are the ground truth the compiled kernels (csrc/) are tested against, and the
fallback when no compiled extension loads. All ops are in place on ``delta`` (float32)
and follow the same conventions:

* ``eps, alpha, lo, hi`` are Python scalars or per-channel tensors of shape (C,)
  (broadcast over N, H, W); ``x`` and ``delta`` are (N, C, ...) float32.
* ``mask`` is an optional per-sample bool tensor (N,): True = update that sample,
  False = leave its delta untouched.
* sign(0) = 0, and an L2 step with g = 0 leaves delta where it is (before projection).
"""
from __future__ import annotations

import torch

def _per_channel(v, ref: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or (C,) tensor against an (N, C, ...) tensor."""
    if isinstance(v, torch.Tensor):
        v = v.to(device=ref.device, dtype=torch.float32)
        if v.dim() == 0:
            return v
        shape = [1, v.numel()] + [1] * (ref.dim() - 2)
        return v.reshape(shape)
    return float(v)

def _sample_view(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.reshape([ref.shape[0]] + [1] * (ref.dim() - 1))

def _clip_box_(delta, x, lo, hi):
    # delta <- clip(x + delta, lo, hi) - x
    new = torch.minimum(torch.maximum(x + delta, lo if isinstance(lo, torch.Tensor) else torch.full_like(x, lo)),
                        hi if isinstance(hi, torch.Tensor) else torch.full_like(x, hi)) - x
    return new

def _commit(delta, new, mask):
    if mask is None:
        delta.copy_(new)
    else:
        delta.copy_(torch.where(_sample_view(mask.to(torch.bool), delta), new, delta))
    return delta

def linf_step_ref_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- clip(delta + alpha*sign(g), -eps, eps); delta <- clip(x + delta, lo, hi) - x."""
    eps, alpha = _per_channel(eps, delta), _per_channel(alpha, delta)
    lo, hi = _per_channel(lo, delta), _per_channel(hi, delta)
    new = delta + alpha * torch.sign(grad.float())
    new = torch.maximum(torch.minimum(new, eps if isinstance(eps, torch.Tensor) else torch.full_like(new, eps)),
                        -eps if isinstance(eps, torch.Tensor) else torch.full_like(new, -eps))
    new = _clip_box_(new, x, lo, hi)
    return _commit(delta, new, mask)

def _l2_norm_per_sample(t: torch.Tensor) -> torch.Tensor:
    return _sample_view(t.float().flatten(1).norm(p=2, dim=1), t)

def l2_step_ref_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- delta + alpha*g/||g||; project onto ||delta||_2 <= eps; clip to the box.

    ``eps`` and ``alpha`` are scalars for L2 (a per-sample radius in pixel units);
    ``lo``/``hi`` may be per-channel.
    """
    g = grad.float()
    gnorm = _l2_norm_per_sample(g)
    step = torch.where(gnorm > 0, g / gnorm.clamp_min(1e-30), torch.zeros_like(g))
    new = delta + float(alpha) * step
    dnorm = _l2_norm_per_sample(new)
    factor = torch.where(dnorm > float(eps), float(eps) / dnorm.clamp_min(1e-30), torch.ones_like(dnorm))
    new = new * factor
    new = _clip_box_(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    return _commit(delta, new, mask)

def linf_random_init_ref_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta ~ U(-eps, eps) elementwise, then clipped so x + delta stays in the box."""
    u = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
    eps_t = _per_channel(eps, delta)
    new = (2.0 * u - 1.0) * eps_t
    new = _clip_box_(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    delta.copy_(new)
    return delta

def l2_random_init_ref_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta uniform in the L2 ball of radius eps (direction ~ N(0,I), radius ~ eps*U^(1/d)),
    then clipped to the box."""
    n = delta.shape[0]
    d = delta[0].numel()
    g = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
    g = g / _l2_norm_per_sample(g).clamp_min(1e-30)
    r = torch.rand((n,), generator=generator, device=delta.device, dtype=torch.float32).pow(1.0 / d)
    new = g * _sample_view(r, delta) * float(eps)
    new = _clip_box_(new, x, _per_channel(lo, delta), _per_channel(hi, delta))
    delta.copy_(new)
    return delta

__all__ = ["linf_step_ref_", "l2_step_ref_", "linf_random_init_ref_", "l2_random_init_ref_"]
