"""How long an evaluation will take, said before it starts; refused when beyond a limit.

The estimate is measured, not guessed: one forward and one forward+backward of the model on
the first batch (at most ``PROBE_BATCH`` samples; a warm-up, then the faster of two), times
the passes the suite will make. An attack stage's passes come from its own settings (steps x
restarts x target classes forward+backward passes, or queries forward passes for a
score-based attack) on every sample, so for cascades and early-stopping attacks the
estimate is an upper bound. Certify makes ceil(n0 / batch) + ceil(n / batch) forwards of a
noise batch per image. The timing passes draw no random numbers and change no state (eval
mode; input gradients only).

A run estimated above ``LONG_RUN_HOURS`` is refused with one line saying the estimate and
what to lower, unless ``--allow-long`` is given.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

LONG_RUN_HOURS = 12.0
PROBE_BATCH = 256


def human(seconds: float) -> str:
    """3.2 s, 4 min, 2.5 h, 41 days, 3.1e+06 years."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size or (unit == "min" and seconds >= 60):
            value = seconds / size
            return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.2g} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def _best_of(fn, repeats: int = 2) -> float:
    fn()  # warm-up: first-call allocations, kernel selection
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def seconds_per_sample(model, x, y) -> tuple[float, float]:
    """(forward, forward+backward to the input) seconds per sample, timed on ``x[:PROBE_BATCH]``."""
    x, y = x[:PROBE_BATCH], y[:PROBE_BATCH]

    def forward():
        with torch.no_grad():
            model(x)
        _sync(x)

    def forward_backward():
        xg = x.detach().clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg).float(), y, reduction="sum"), xg)
        _sync(x)

    n = x.shape[0]
    return _best_of(forward) / n, _best_of(forward_backward) / n


def _sync(x) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def stage_passes(attack) -> tuple[int, int]:
    """(forward+backward, forward) passes an attack makes per sample, read from its settings."""
    if hasattr(attack, "n_queries"):  # score-based (Square): one forward per query and restart
        return 0, int(attack.n_queries) * int(getattr(attack, "restarts", 1))
    steps = int(getattr(attack, "steps", 1))
    repeats = int(getattr(attack, "restarts", 1)) * int(getattr(attack, "n_target_classes", 1))
    return steps * repeats, repeats


def attack_seconds(attacks, n_samples: int, per_sample: tuple[float, float]) -> float:
    """Upper bound: every attack on every sample, plus the clean pass."""
    fwd, fwd_bwd = per_sample
    total = fwd
    for attack in attacks:
        bwd_passes, fwd_passes = stage_passes(attack)
        total += bwd_passes * fwd_bwd + fwd_passes * fwd
    return total * n_samples


def diagnostics_seconds(n_samples: int, steps: int, square_queries: int, per_sample: tuple[float, float]) -> float:
    """The gradient-masking checks (eval.diagnostics): PGD-k, PGD-2k, PGD-k at 2, 4 and a very large eps, one
    input gradient, and (quick suite) a Square attack."""
    fwd, fwd_bwd = per_sample
    return n_samples * ((6 * steps + 1) * fwd_bwd + square_queries * fwd)


def certify_seconds(n_images: int, n0: int, n: int, batch_size: int, per_sample_forward: float) -> float:
    forwards = math.ceil(n0 / batch_size) + math.ceil(n / batch_size)
    return n_images * forwards * min(batch_size, n0 + n) * per_sample_forward


def check(seconds: float, what: str, lower: str, *, allow_long: bool, upper_bound: bool,
          limit_hours: float = LONG_RUN_HOURS) -> None:
    """Print the estimate; refuse (ValueError, one line) one above ``limit_hours`` unless ``allow_long``."""
    bound = "; every attack on every sample, less when samples fall early" if upper_bound else ""
    print(f"estimated time: ~{human(seconds)} for {what} (from timing the model on the first batch{bound})", flush=True)
    if seconds > limit_hours * 3600 and not allow_long:
        raise ValueError(f"{what} would take about {human(seconds)} by the estimate, more than {limit_hours:g} h; lower "
                         f"{lower}, or pass --allow-long to run it anyway")
