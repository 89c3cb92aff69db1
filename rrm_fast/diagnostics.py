"""Gradient-masking diagnostics: cheap sanity checks that robust-accuracy numbers can be trusted.

A model that hides its gradients (quantised inputs, saturated softmax, randomness, ...) looks
robust to gradient attacks without being robust. Athalye et al. (2018) and Carlini et al.
(2019) list the symptoms; each check here looks for one of them on a subset of the split:

* ``more_steps``      PGD-2k must not be weaker than PGD-k (accuracy must not rise with steps);
* ``larger_eps``      accuracy must not rise from eps to 2 eps to 4 eps;
* ``large_eps``       at an eps so large that the ball holds the mid-grey image (L-inf 0.5 of
                      the box, L2 0.5 sqrt(d) of it) robust accuracy must be ~0 (<= 5%);
* ``zero_gradients``  the input gradient of the CE loss must not vanish (exactly 0 or not
                      finite) on correctly classified samples (<= 1% of them);
* ``black_box``       the score-based Square attack must not fool any sample on which every
                      white-box attack failed.

A violated check is a warning carrying its numbers; it never changes the reported accuracy.
The rise tolerances absorb random-start noise: a rise counts only above max(1 point, 2 samples).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attacks import PGD, Square, canonical_norm

RISE_TOLERANCE = 0.01        # accuracy may wobble by this much (or 2 samples) between runs
LARGE_EPS_MAX_ACC = 0.05     # robust accuracy expected at the very large eps
ZERO_GRAD_MAX_FRACTION = 0.01


def large_eps(norm: str, image_shape, lo: float = 0.0, hi: float = 1.0) -> float:
    """An eps whose ball around every image in the box contains the constant mid-grey image,
    so no classifier can be right on more than one class inside it."""
    half = 0.5 * (hi - lo)
    if canonical_norm(norm) == "Linf":
        return half
    return half * math.sqrt(math.prod(image_shape))


def batch_seed(seed: int, start: int) -> int:
    """The generator seed for the batch starting at sample ``start``: fixed per batch, so a
    resumed or re-batched-from-the-same-start run draws the same random starts."""
    return seed * 1_000_003 + start


def _robust_mask(model, attack_model, x, y, make_attack, batch_size, seed):
    """Per-sample: correctly classified and still correct after the attack (fp32 model judges)."""
    out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        gen = torch.Generator(device=x.device).manual_seed(batch_seed(seed, i))
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        x_adv = make_attack(attack_model, gen)(xb, yb)
        with torch.no_grad():
            out[i:i + batch_size] = correct & (model(x_adv).argmax(1) == yb)
    return out


def _zero_gradient_count(model, x, y, batch_size):
    zero = correct_n = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        yb = y[i:i + batch_size]
        logits = model(xb)
        grad, = torch.autograd.grad(F.cross_entropy(logits.float(), yb, reduction="sum"), xb)
        correct = (logits.detach().argmax(1) == yb)
        flat = grad.flatten(1)
        dead = (flat == 0).all(1) | ~torch.isfinite(flat).all(1)
        zero += int((dead & correct).sum())
        correct_n += int(correct.sum())
    return zero, correct_n


def _pct(v):
    return f"{100 * v:.1f}%"


def gradient_masking_checks(model, x, y, *, eps, norm="Linf", steps=20, batch_size=500, seed=0, square_queries=1000,
                            whitebox_robust=None, blackbox=None, attack_model=None, lo=0.0, hi=1.0) -> dict:
    """Run the checks on images ``x`` (N, C, H, W) in [lo, hi] with labels ``y``.

    ``whitebox_robust``: optional per-sample bool mask of samples the suite's white-box attacks
    failed on (combined with the PGD runs here for the black-box check).
    ``blackbox``: optional {"attack", "run_on", "fooled"} from a suite that already ran Square
    after its white-box attacks; then Square is not rerun here.
    ``attack_model``: the model the attacks query (e.g. an autocast wrapper); accuracy is
    always judged by ``model``.
    """
    norm = canonical_norm(norm)
    attack_model = attack_model if attack_model is not None else model
    was_training = model.training
    model.eval()
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("gradient-masking checks need at least one sample; pass --diag-size >= 1")
    tol = max(RISE_TOLERANCE, 2.0 / n)
    checks = []

    def pgd(e, k):
        return lambda m, gen: PGD(m, eps=e, steps=k, norm=norm, early_stop=True, lo=lo, hi=hi, generator=gen)

    def acc_of(mask):
        return float(mask.float().mean())

    r_k = _robust_mask(model, attack_model, x, y, pgd(eps, steps), batch_size, seed)
    r_2k = _robust_mask(model, attack_model, x, y, pgd(eps, 2 * steps), batch_size, seed)
    a_k, a_2k = acc_of(r_k), acc_of(r_2k)
    ok = a_2k <= a_k + tol
    checks.append({"name": "more_steps", "ok": ok, "values": {f"PGD-{steps}": a_k, f"PGD-{2 * steps}": a_2k},
                   "message": (f"PGD-{steps} {_pct(a_k)}, PGD-{2 * steps} {_pct(a_2k)}"
                               + ("" if ok else " -- accuracy ROSE with more steps: the attack is not converging "
                                                "(gradient masking or too large a step)"))})

    r_2e = _robust_mask(model, attack_model, x, y, pgd(2 * eps, steps), batch_size, seed)
    r_4e = _robust_mask(model, attack_model, x, y, pgd(4 * eps, steps), batch_size, seed)
    a_2e, a_4e = acc_of(r_2e), acc_of(r_4e)
    ok = a_2e <= a_k + tol and a_4e <= a_2e + tol
    checks.append({"name": "larger_eps", "ok": ok, "values": {f"{eps:g}": a_k, f"{2 * eps:g}": a_2e, f"{4 * eps:g}": a_4e},
                   "message": (f"PGD-{steps} at eps {eps:g} {_pct(a_k)}, {2 * eps:g} {_pct(a_2e)}, {4 * eps:g} {_pct(a_4e)}"
                               + ("" if ok else " -- accuracy ROSE with a larger eps"))})

    big = large_eps(norm, tuple(x.shape[1:]), lo, hi)
    r_big = _robust_mask(model, attack_model, x, y, pgd(big, steps), batch_size, seed)
    a_big = acc_of(r_big)
    ok = a_big <= LARGE_EPS_MAX_ACC
    checks.append({"name": "large_eps", "ok": ok, "values": {"eps": big, "acc": a_big},
                   "message": (f"PGD-{steps} at eps {big:.3g} {_pct(a_big)} (<= {_pct(LARGE_EPS_MAX_ACC)} expected)"
                               + ("" if ok else " -- a ball this large holds the mid-grey image, so the attack should "
                                                "reach ~0%: its gradients are not guiding it"))})

    zero, n_correct = _zero_gradient_count(attack_model, x, y, batch_size)
    frac = zero / max(n_correct, 1)
    ok = frac <= ZERO_GRAD_MAX_FRACTION
    checks.append({"name": "zero_gradients", "ok": ok, "values": {"zero": zero, "correct": n_correct, "fraction": frac},
                   "message": (f"{zero} of {n_correct} correctly classified samples have an all-zero or non-finite "
                               f"input gradient" + ("" if ok else " -- shattered/vanishing gradients (e.g. input "
                                                                    "quantisation or a saturated softmax)"))})

    if blackbox is None:
        wb = r_k & r_2k
        if whitebox_robust is not None:
            wb = wb & whitebox_robust.to(wb.device)
        idx = wb.nonzero().squeeze(1)
        fooled = 0
        for i in range(0, idx.numel(), batch_size):
            bi = idx[i:i + batch_size]
            gen = torch.Generator(device=x.device).manual_seed(batch_seed(seed + 1, i))
            x_adv = Square(attack_model, eps=eps, norm=norm, n_queries=square_queries, lo=lo, hi=hi, generator=gen)(x[bi], y[bi])
            with torch.no_grad():
                fooled += int((model(x_adv).argmax(1) != y[bi]).sum())
        blackbox = {"attack": f"Square-{square_queries}", "run_on": int(idx.numel()), "fooled": fooled}
    ok = blackbox["fooled"] == 0
    checks.append({"name": "black_box", "ok": ok, "values": dict(blackbox),
                   "message": (f"{blackbox['attack']} fooled {blackbox['fooled']} of the {blackbox['run_on']} samples "
                               f"every white-box attack failed on"
                               + ("" if ok else " -- a gradient-free attack beat the gradient attacks: white-box "
                                                "numbers overstate robustness"))})

    model.train(was_training)
    warnings = [f"{c['name']}: {c['message']}" for c in checks if not c["ok"]]
    return {"n": n, "eps": eps, "norm": norm, "steps": steps, "checks": checks, "warnings": warnings}


def format_diagnostics(diag: dict, where: str = "") -> str:
    lines = [f"gradient-masking diagnostics ({where or str(diag['n']) + ' samples'}):"]
    for c in diag["checks"]:
        tag = "[ok]  " if c["ok"] else "[WARN]"
        lines.append(f"  {tag} {c['name']:<15} {c['message']}")
    lines.append(f"  -> {len(diag['warnings'])} warning(s)" + (": these robust-accuracy numbers may overstate robustness"
                                                               if diag["warnings"] else ""))
    return "\n".join(lines)


__all__ = ["gradient_masking_checks", "format_diagnostics", "large_eps", "batch_seed"]
