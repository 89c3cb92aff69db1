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

# Load the extensions now, not on first use: torch.compile cannot trace the first load (it
# imports modules under a lock), and a fullgraph compile would stop there.
_ext.extension("cpu")


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
    if not isinstance(mask, torch.Tensor) or mask.dim() != 1 or mask.shape[0] != delta.shape[0]:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{op}: mask must be a ({delta.shape[0]},) tensor, one bool per sample, got {got}")
    if mask.dtype != torch.bool or mask.device != delta.device or not mask.is_contiguous():
        mask = mask.to(device=delta.device, dtype=torch.bool).contiguous()
    return mask


# Python numbers take this fast path (an isinstance against numbers.Real costs ~1 us).
_PLAIN_NUMBERS = (float, int)


def _is_number(value) -> bool:
    return type(value) in _PLAIN_NUMBERS or (not isinstance(value, torch.Tensor) and isinstance(value, numbers.Real))


def _check_params(op: str, delta, names: tuple, values: tuple, scalar_only: tuple = ()) -> None:
    """Each value a number, or a tensor of 1 or C values (1 only, for names in scalar_only);
    a number eps must be >= 0 and number bounds need lo <= hi."""
    for name, value in zip(names, values):
        if type(value) in _PLAIN_NUMBERS:
            continue
        if isinstance(value, torch.Tensor):
            channels = delta.shape[1]
            if name in scalar_only and value.numel() != 1:
                raise ValueError(f"{op}: {name} must be a scalar (one L2 radius or step per sample), got {value.numel()} values")
            if value.numel() not in (1, channels):
                raise ValueError(f"{op}: {name} has {value.numel()} values but delta has {channels} channels; "
                                 f"pass a number or a ({channels},) tensor")
        elif not isinstance(value, numbers.Real):
            raise TypeError(f"{op}: {name} must be a number or a tensor, got {type(value).__name__}")
    eps, lo, hi = values[0], values[-2], values[-1]  # every op's values start with eps and end with lo, hi
    if _is_number(eps) and not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    if _is_number(lo) and _is_number(hi) and not lo <= hi:
        raise ValueError(f"{op}: the box needs lo <= hi, got lo={lo}, hi={hi}")


# ---------------------------------------------------------------------------------------
# Bringing arguments into the form the compiled ops take
# ---------------------------------------------------------------------------------------


def _use_compiled(delta: torch.Tensor) -> bool:
    if _ext.has_pgd_ops(delta.device.type):
        return True
    _ext.warn_fallback_once(delta.device.type)
    return False


def _channel_rows(delta: torch.Tensor, values: tuple) -> torch.Tensor:
    """(len(values), C) float32 rows on delta's device from numbers and per-channel tensors."""
    channels = delta.shape[1]
    rows = []
    for v in values:
        if isinstance(v, torch.Tensor):
            rows.append(v.detach().to(device=delta.device, dtype=torch.float32).reshape(-1).expand(channels))
        else:
            rows.append(torch.full((channels,), float(v), device=delta.device, dtype=torch.float32))
    return torch.stack(rows)


def _scalars_and_rows(delta: torch.Tensor, values: tuple):
    """The op's scalar arguments and its optional rows: the numbers themselves, or rows that
    replace them (the scalars are then unused) when any value is a tensor."""
    if all(type(v) in _PLAIN_NUMBERS for v in values) or not any(isinstance(v, torch.Tensor) for v in values):
        return tuple(float(v) for v in values), None
    return (0.0,) * len(values), _channel_rows(delta, values)


def _dense_format(delta: torch.Tensor):
    """The memory format the kernels can walk delta in, or None when delta is not dense."""
    if delta.is_contiguous():
        return torch.contiguous_format
    if delta.dim() == 4 and delta.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if delta.dim() == 5 and delta.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _in_format(t: torch.Tensor, fmt) -> torch.Tensor:
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def _call_in_place(op, delta, like_delta: tuple, rest: tuple, draw=None) -> torch.Tensor:
    """op(target, *like_delta in target's memory layout, *drawn, *rest), where target is delta,
    or a contiguous copy written back when delta is not dense, and drawn = draw(target, fmt):
    the random numbers the op transforms, filled into target (plus any it returns)."""
    fmt = _dense_format(delta)
    target = delta if fmt is not None else delta.contiguous()
    fmt = fmt if fmt is not None else torch.contiguous_format
    drawn = draw(target, fmt) if draw is not None else ()
    op(target, *(_in_format(t, fmt) for t in like_delta), *drawn, *rest)
    if target is not delta:
        delta.copy_(target)
    return delta


_ops: dict = {}


def _op(name: str):
    """The compiled op overload (looked up once: attribute chains on torch.ops cost ~1 us)."""
    op = _ops.get(name)
    if op is None:
        op = _ops[name] = getattr(torch.ops.rrm_fast, name).default
    return op


# ---------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------


def linf_step_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- clip(delta + alpha*sign(grad), -eps, eps), then delta <- clip(x + delta, lo, hi) - x."""
    op = "linf_step_"
    _check_batch(op, delta, x)
    _check_grad(op, delta, grad)
    mask = _check_mask(op, delta, mask)
    values = (eps, alpha, lo, hi)
    _check_params(op, delta, ("eps", "alpha", "lo", "hi"), values)
    if not _use_compiled(delta):
        return linf_step_ref_(delta, grad, x, eps, alpha, lo, hi, mask)
    scalars, rows = _scalars_and_rows(delta, values)
    return _call_in_place(_op(op), delta, (grad, x), (mask, *scalars, rows))


def l2_step_(delta, grad, x, eps, alpha, lo=0.0, hi=1.0, mask=None):
    """delta <- delta + alpha*grad/||grad||_2 per sample (no move where grad = 0), projected onto
    ||delta||_2 <= eps, then delta <- clip(x + delta, lo, hi) - x."""
    op = "l2_step_"
    _check_batch(op, delta, x)
    _check_grad(op, delta, grad)
    mask = _check_mask(op, delta, mask)
    _check_params(op, delta, ("eps", "alpha", "lo", "hi"), (eps, alpha, lo, hi), ("eps", "alpha"))
    if not _use_compiled(delta):
        return l2_step_ref_(delta, grad, x, eps, alpha, lo, hi, mask)
    box, rows = _scalars_and_rows(delta, (lo, hi))
    return _call_in_place(_op(op), delta, (grad, x), (mask, float(eps), float(alpha), *box, rows))


def _draw_uniform(target: torch.Tensor, fmt, generator) -> None:
    """The numbers the reference draws, torch.rand(delta.shape): in contiguous memory, filled
    in place in the same order without a buffer."""
    if fmt == torch.contiguous_format:
        target.uniform_(0.0, 1.0, generator=generator)
    else:
        target.copy_(torch.rand(target.shape, generator=generator, device=target.device, dtype=torch.float32))


def _draw_normal(target: torch.Tensor, fmt, generator) -> None:
    """As _draw_uniform, for the reference's torch.randn(delta.shape)."""
    if fmt == torch.contiguous_format:
        target.normal_(generator=generator)
    else:
        target.copy_(torch.randn(target.shape, generator=generator, device=target.device, dtype=torch.float32))


def linf_random_init_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta ~ U(-eps, eps) elementwise (torch's generator), then clipped so x + delta stays in the box."""
    op = "linf_random_init_"
    _check_batch(op, delta, x)
    values = (eps, lo, hi)
    _check_params(op, delta, ("eps", "lo", "hi"), values)
    if not _use_compiled(delta):
        return linf_random_init_ref_(delta, x, eps, lo, hi, generator)
    scalars, rows = _scalars_and_rows(delta, values)

    def draw(target, fmt):
        _draw_uniform(target, fmt, generator)
        return ()

    return _call_in_place(_op("linf_init_from_uniform_"), delta, (x,), (*scalars, rows), draw)


def l2_random_init_(delta, x, eps, lo=0.0, hi=1.0, generator=None):
    """delta uniform in the L2 ball of radius eps (direction ~ N(0, I), radius ~ eps*U^(1/d), from
    torch's generator), then clipped so x + delta stays in the box."""
    op = "l2_random_init_"
    _check_batch(op, delta, x)
    _check_params(op, delta, ("eps", "lo", "hi"), (eps, lo, hi), ("eps",))
    if not _use_compiled(delta):
        return l2_random_init_ref_(delta, x, eps, lo, hi, generator)
    box, rows = _scalars_and_rows(delta, (lo, hi))
    sample_size = max(1, math.prod(delta.shape[1:]))

    def draw(target, fmt):
        # The reference's order: the normal directions, then one uniform radius per sample.
        _draw_normal(target, fmt, generator)
        radius = torch.rand((delta.shape[0],), generator=generator, device=delta.device, dtype=torch.float32)
        return (radius.pow_(1.0 / sample_size),)

    return _call_in_place(_op("l2_init_from_normal_"), delta, (x,), (float(eps), *box, rows), draw)


__all__ = ["linf_step_", "l2_step_", "linf_random_init_", "l2_random_init_", "pgd_backend"]
