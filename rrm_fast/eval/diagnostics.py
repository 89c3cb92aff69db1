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
* ``ce_vs_margin``    PGD-k on a margin loss (DLR; CW with 2 classes) must not find 2 points
                      or more beyond PGD-k on CE on the same samples: if it does, CE is being
                      fooled (soft logits spread probability without flipping the argmax) and
                      a CE-only figure overstates robustness;
* ``black_box``       the score-based Square attack must not fool any sample on which every
                      white-box attack failed.

A violated check is a warning carrying its numbers; it never changes the reported accuracy.
The rise tolerances absorb random-start noise: a rise counts only above max(1 point, 2 samples).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attacks import PGD, Square, canonical_norm, ce_per_sample, cw_loss, dlr_loss
from .batches import batch_generator, tensor_batches
from .runner import Stage, aggregate, attack_batch, batch_records

RISE_TOLERANCE = 0.01        # accuracy may wobble by this much (or 2 samples) between runs
LARGE_EPS_MAX_ACC = 0.05     # robust accuracy expected at the very large eps
ZERO_GRAD_MAX_FRACTION = 0.01
MARGIN_GAP_POINTS = 2        # a margin attack beating CE by this many points on the same samples


def large_eps(norm: str, image_shape, lo: float = 0.0, hi: float = 1.0) -> float:
    """An eps whose ball around every image in the box contains the constant mid-grey image,
    so no classifier can be right on more than one class inside it."""
    half = 0.5 * (hi - lo)
    if canonical_norm(norm) == "Linf":
        return half
    return half * math.sqrt(math.prod(image_shape))


def attacked_totals(model, x, y, make_attack, *, eps, norm, batch_size, seed, lo=0.0, hi=1.0) -> dict:
    """Attack every sample of (x, y) batch by batch with ``make_attack(generator)`` (seeded per
    batch), through the batch runner; the summed counts and the per-sample robust mask."""
    def evaluate_batch(start, xb, yb):
        stage = Stage("attack", make_attack(batch_generator(x.device, seed, start)), scope="batch")
        return attack_batch(model, [stage], xb, yb, eps=eps, norm=norm, lo=lo, hi=hi)

    tot = aggregate(batch_records(tensor_batches(x, y, batch_size), evaluate_batch=evaluate_batch), ["attack"])
    tot["mask"] = tot["mask"].to(x.device)
    return tot


def _zero_gradient_count(model, x, y, batch_size):
    zero = correct_n = 0
    for _, xb, yb in tensor_batches(x, y, batch_size):
        xb = xb.clone().requires_grad_(True)
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


def _check(name, ok, values, message, why):
    return {"name": name, "ok": ok, "values": values, "message": message + ("" if ok else " -- " + why)}


def _pgd_checks(robust_acc, eps, big, steps, tol) -> list[dict]:
    """more_steps, larger_eps and large_eps from the PGD accuracies ``robust_acc(eps, steps)``."""
    a_k, a_2k = robust_acc(eps, steps), robust_acc(eps, 2 * steps)
    a_2e, a_4e = robust_acc(2 * eps, steps), robust_acc(4 * eps, steps)
    a_big = robust_acc(big, steps)
    return [
        _check("more_steps", a_2k <= a_k + tol, {f"PGD-{steps}": a_k, f"PGD-{2 * steps}": a_2k},
               f"PGD-{steps} {_pct(a_k)}, PGD-{2 * steps} {_pct(a_2k)}",
               "accuracy ROSE with more steps: the attack is not converging (gradient masking or too large a step)"),
        _check("larger_eps", a_2e <= a_k + tol and a_4e <= a_2e + tol,
               {f"{eps:g}": a_k, f"{2 * eps:g}": a_2e, f"{4 * eps:g}": a_4e},
               f"PGD-{steps} at eps {eps:g} {_pct(a_k)}, {2 * eps:g} {_pct(a_2e)}, {4 * eps:g} {_pct(a_4e)}",
               "accuracy ROSE with a larger eps"),
        _check("large_eps", a_big <= LARGE_EPS_MAX_ACC + 1e-9, {"eps": big, "acc": a_big},
               f"PGD-{steps} at eps {big:.3g} {_pct(a_big)} (<= {_pct(LARGE_EPS_MAX_ACC)} expected)",
               "a ball this large holds the mid-grey image, so the attack should reach ~0%: its gradients are not "
               "guiding it"),
    ]


def ce_vs_margin(ce_attack: str, ce_robust: int, margin_attack: str, margin_robust: int, n: int) -> dict:
    """The CE-vs-margin check from the robust counts of a CE attack and a margin attack run on
    the same ``n`` samples: it fails when the margin attack finds >= 2 points more."""
    ce_acc, margin_acc = ce_robust / max(n, 1), margin_robust / max(n, 1)
    ok = 100 * (ce_robust - margin_robust) < MARGIN_GAP_POINTS * n  # integers: no rounding at the threshold
    return _check("ce_vs_margin", ok, {ce_attack: ce_acc, margin_attack: margin_acc, "n": n,
                                       "gap_points": 100 * (ce_acc - margin_acc)},
                  f"{ce_attack} {_pct(ce_acc)}, {margin_attack} {_pct(margin_acc)} on the same {n} samples",
                  f"the margin attack finds {100 * (ce_acc - margin_acc):.1f} points more than CE: CE-only figures "
                  f"overstate robustness here (soft logits spread probability without flipping the argmax); "
                  f"report the worst case over CE and a margin loss")


def _blackbox_check(blackbox) -> dict:
    return _check("black_box", blackbox["fooled"] == 0, dict(blackbox),
                  f"{blackbox['attack']} fooled {blackbox['fooled']} of the {blackbox['run_on']} samples every "
                  f"white-box attack failed on",
                  "a gradient-free attack beat the gradient attacks: white-box numbers overstate robustness")


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
    masks = {}

    def robust_acc(e, k, loss_fn=ce_per_sample):
        make = lambda gen: PGD(attack_model, eps=e, steps=k, norm=norm, loss_fn=loss_fn, early_stop=True, lo=lo, hi=hi,
                               generator=gen)
        masks[e, k, loss_fn] = attacked_totals(model, x, y, make, eps=e, norm=norm, batch_size=batch_size, seed=seed,
                                               lo=lo, hi=hi)["mask"]
        return masks[e, k, loss_fn]

    def acc(e, k):
        return int(robust_acc(e, k).sum()) / n

    # + 1e-9: a rise of exactly the tolerance does not count (float sums of k/n round either way)
    tol = max(RISE_TOLERANCE, 2.0 / n) + 1e-9
    checks = _pgd_checks(acc, eps, large_eps(norm, tuple(x.shape[1:]), lo, hi), steps, tol)
    zero, n_correct = _zero_gradient_count(attack_model, x, y, batch_size)
    frac = zero / max(n_correct, 1)
    checks.append(_check("zero_gradients", frac <= ZERO_GRAD_MAX_FRACTION,
                         {"zero": zero, "correct": n_correct, "fraction": frac},
                         f"{zero} of {n_correct} correctly classified samples have an all-zero or non-finite input "
                         f"gradient", "shattered/vanishing gradients (e.g. input quantisation or a saturated softmax)"))
    with torch.no_grad():
        margin_name, margin_fn = ("DLR", dlr_loss) if model(x[:1]).shape[1] >= 3 else ("CW", cw_loss)
    margin_mask = robust_acc(eps, steps, margin_fn)
    checks.append(ce_vs_margin(f"PGD-{steps}-CE", int(masks[eps, steps, ce_per_sample].sum()), f"PGD-{steps}-{margin_name}",
                               int(margin_mask.sum()), n))
    if blackbox is None:
        wb = masks[eps, steps, ce_per_sample] & masks[eps, 2 * steps, ce_per_sample] & margin_mask
        if whitebox_robust is not None:
            wb = wb & whitebox_robust.to(wb.device)
        idx = wb.nonzero().squeeze(1)
        make = lambda gen: Square(attack_model, eps=eps, norm=norm, n_queries=square_queries, lo=lo, hi=hi, generator=gen)
        sq = attacked_totals(model, x[idx], y[idx], make, eps=eps, norm=norm, batch_size=batch_size, seed=seed + 1,
                             lo=lo, hi=hi)
        blackbox = {"attack": f"Square-{square_queries}", "run_on": int(idx.numel()), "fooled": sq["fooled"].get("attack", 0)}
    checks.append(_blackbox_check(blackbox))
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
