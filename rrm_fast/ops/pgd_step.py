"""PGD step ops: the public entry points, dispatching to the compiled kernels or the reference.

Every attack and adversarial training method repeats, k times per batch, one elementwise
update of the perturbation delta: step along the gradient, project onto the eps-ball,
clip x + delta to the valid box. These ops do it in one pass over memory (csrc/: C++ on
the CPU, CUDA on GPUs) and fall back to the PyTorch references in pgd_reference.py, with
one warning per device type, where no compiled extension is loaded.

Conventions (all ops, in place on ``delta``, which they also return):

* ``delta`` and ``x``: float32, shape (N, C, ...), one device; ``grad``: the shape of delta,
  float32, float16 or bfloat16, any strides.
* ``eps, alpha, lo, hi``: Python numbers, or tensors of C per-channel values (for code that
  works in normalised space). The L2 ops take scalar ``eps`` and ``alpha``.
* ``mask``: optional (N,) bool; True steps the sample, False leaves its delta untouched.
* Call them under ``torch.no_grad()`` (they are not differentiable).
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _ext
from .pgd_reference import l2_random_init_ref_, l2_step_ref_, linf_random_init_ref_, linf_step_ref_

_GRAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def pgd_backend(device_type: str | torch.device = "cpu") -> str:
    """What runs the PGD step ops for tensors on this device type:
    'cpp' (compiled CPU kernels), 'cuda' (compiled CUDA kernels) or 'reference' (PyTorch)."""
    device_type = torch.device(device_type).type
    if device_type in ("cpu", "cuda") and _ext.has_pgd_ops(device_type):
        return "cpp" if device_type == "cpu" else "cuda"
    return "reference"


# ---------------------------------------------------------------------------------------
# Argument checks: one clear line naming the problem and the fix
# ---------------------------------------------------------------------------------------


def _check_batch(op: str, delta, x) -> None:
    if not isinstance(delta, torch.Tensor) or delta.dtype != torch.float32:
        got = delta.dtype if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise TypeError(f"{op}: delta must be a float32 tensor, got {got}; keep the perturbation in float32")
    if delta.dim() < 2:
        raise ValueError(f"{op}: delta must be a batch (N, C, ...), got shape {tuple(delta.shape)}; add the batch dimension")
    if delta.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{op}: delta requires grad and grad mode is on; call the op under torch.no_grad()")
    if not isinstance(x, torch.Tensor) or x.shape != delta.shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: x must have the shape of delta {tuple(delta.shape)}, got {got}")
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: x must be float32, got {x.dtype}; pass x.float()")
    if x.device != delta.device:
        raise ValueError(f"{op}: x is on {x.device} but delta is on {delta.device}; move both to one device")


def _check_grad(op: str, delta, grad) -> None:
    if not isinstance(grad, torch.Tensor) or grad.shape != delta.shape:
        got = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
        raise ValueError(f"{op}: grad must have the shape of delta {tuple(delta.shape)}, got {got}")
    if grad.dtype not in _GRAD_DTYPES:
        raise TypeError(f"{op}: grad must be float32, float16 or bfloat16, got {grad.dtype}; pass grad.float()")
    if grad.device != delta.device:
        raise ValueError(f"{op}: grad is on {grad.device} but delta is on {delta.device}; move both to one device")


def _check_mask(op: str, delta, mask) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.numel() != delta.shape[0] or mask.dim() != 1:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{op}: mask must be a ({delta.shape[0]},) tensor, one bool per sample, got {got}")
    return mask.to(device=delta.device, dtype=torch.bool).contiguous()


def _check_value(op: str, name: str, value, channels: int, scalar_only: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        if scalar_only and value.numel() != 1:
            raise ValueError(f"{op}: {name} must be a scalar (one L2 radius or step per sample), got {value.numel()} values")
        if value.numel() not in (1, channels):
            raise ValueError(
                f"{op}: {name} has {value.numel()} values but delta has {channels} channels; pass a number or a ({channels},) tensor"
            )
    elif not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number or a tensor, got {type(value).__name__}")


def _check_params(op: str, delta, *, scalar_only=(), **values) -> None:
    channels = delta.shape[1]
    for name, value in values.items():
        _check_value(op, name, value, channels, scalar_only=name in scalar_only)
    eps = values.get("eps")
    if isinstance(eps, numbers.Real) and not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    lo, hi = values.get("lo"), values.get("hi")
    if isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real) and not lo <= hi:
        raise ValueError(f"{op}: the box needs lo <= hi, got lo={lo}, hi={hi}")


# ---------------------------------------------------------------------------------------
# Bringing arguments into the form the compiled ops take
# ---------------------------------------------------------------------------------------


def _use_compiled(delta: torch.Tensor) -> bool:
    if _ext.has_pgd_ops(delta.device.type):
        return True
    _ext.warn_fallback_once(delta.device.type)
    return False


def _dense_format(delta: torch.Tensor):
    """The memory format the kernels can walk delta in, or None when delta is not dense."""
    if delta.is_contiguous():
        return torch.contiguous_format
    if delta.dim() == 4 and delta.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if delta.dim() == 5 and delta.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _scalars_or_rows(delta: torch.Tensor, values: list):
    """(floats, None) when every value is a number, else (zeros, (len(values), C) float32 rows)."""
    if not any(isinstance(v, torch.Tensor) for v in values):
        return [float(v) for v in values], None
    channels = delta.shape[1]
    rows = []
    for v in values:
        if isinstance(v, torch.Tensor):
            rows.append(v.detach().to(device=delta.device, dtype=torch.float32).reshape(-1).expand(channels))
        else:
            rows.append(torch.full((channels,), float(v), device=delta.device, dtype=torch.float32))
    return [0.0] * len(values), torch.stack(rows)


def _run_dense(delta: torch.Tensor, body) -> torch.Tensor:
    """Run body(target, memory_format) on delta, through a contiguous copy if delta is not dense."""
    fmt = _dense_format(delta)
    if fmt is not None:
        body(delta, fmt)
    else:
        target = delta.contiguous()
        body(target, torch.contiguous_format)
        delta.copy_(target)
    return delta


# ---------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------


def linf_step_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- clip(delta + alpha*sign(grad), -eps, eps), then delta <- clip(x + delta, lo, hi) - x."""
    op = "linf_step_"
    _check_batch(op, delta, x)
    _check_grad(op, delta, grad)
    mask = _check_mask(op, delta, mask)
    _check_params(op, delta, eps=eps, alpha=alpha, lo=lo, hi=hi)
    if not _use_compiled(delta):
        return linf_step_ref_(delta, grad, x, eps, alpha, lo, hi, mask)
    scalars, rows = _scalars_or_rows(delta, [eps, alpha, lo, hi])

    def body(target, fmt):
        torch.ops.rrm_fast.linf_step_(
            target, grad.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt), mask, *scalars, rows
        )

    return _run_dense(delta, body)


def l2_step_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- delta + alpha*grad/||grad||_2 per sample (no move where grad = 0), projected onto
    ||delta||_2 <= eps, then delta <- clip(x + delta, lo, hi) - x."""
    op = "l2_step_"
    _check_batch(op, delta, x)
    _check_grad(op, delta, grad)
    mask = _check_mask(op, delta, mask)
    _check_params(op, delta, scalar_only=("eps", "alpha"), eps=eps, alpha=alpha, lo=lo, hi=hi)
    if not _use_compiled(delta):
        return l2_step_ref_(delta, grad, x, eps, alpha, lo, hi, mask)
    scalars, box = _scalars_or_rows(delta, [lo, hi])

    def body(target, fmt):
        torch.ops.rrm_fast.l2_step_(
            target, grad.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt), mask,
            float(eps), float(alpha), *scalars, box,
        )

    return _run_dense(delta, body)


def _draw(target: torch.Tensor, fmt, kind: str, generator) -> None:
    """Fill target with the numbers the reference draws: torch.rand/randn of delta's shape.
    In contiguous memory, filling in place draws them in the same order without a buffer."""
    if fmt == torch.contiguous_format:
        if kind == "uniform":
            target.uniform_(0.0, 1.0, generator=generator)
        else:
            target.normal_(generator=generator)
        return
    draw = torch.rand if kind == "uniform" else torch.randn
    target.copy_(draw(target.shape, generator=generator, device=target.device, dtype=torch.float32))


def linf_random_init_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta ~ U(-eps, eps) elementwise (torch's generator), then clipped so x + delta stays in the box."""
    op = "linf_random_init_"
    _check_batch(op, delta, x)
    _check_params(op, delta, eps=eps, lo=lo, hi=hi)
    if not _use_compiled(delta):
        return linf_random_init_ref_(delta, x, eps, lo, hi, generator)
    scalars, rows = _scalars_or_rows(delta, [eps, lo, hi])

    def body(target, fmt):
        _draw(target, fmt, "uniform", generator)
        torch.ops.rrm_fast.linf_init_from_uniform_(target, x.contiguous(memory_format=fmt), *scalars, rows)

    return _run_dense(delta, body)


def l2_random_init_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta uniform in the L2 ball of radius eps (direction ~ N(0, I), radius ~ eps*U^(1/d), from
    torch's generator), then clipped so x + delta stays in the box."""
    op = "l2_random_init_"
    _check_batch(op, delta, x)
    _check_params(op, delta, scalar_only=("eps",), eps=eps, lo=lo, hi=hi)
    if not _use_compiled(delta):
        return l2_random_init_ref_(delta, x, eps, lo, hi, generator)
    scalars, box = _scalars_or_rows(delta, [lo, hi])
    sample_size = max(1, math.prod(delta.shape[1:]))

    def body(target, fmt):
        _draw(target, fmt, "normal", generator)
        radius = torch.rand((delta.shape[0],), generator=generator, device=delta.device, dtype=torch.float32)
        radius = radius.pow_(1.0 / sample_size)
        torch.ops.rrm_fast.l2_init_from_normal_(target, x.contiguous(memory_format=fmt), radius, float(eps), *scalars, box)

    return _run_dense(delta, body)


__all__ = ["linf_step_", "l2_step_", "linf_random_init_", "l2_random_init_", "pgd_backend"]
