"""Named attack sets: what a reported robust accuracy is the worst case over, chosen by name.

Every set is a list of stages for the batch runner (rrm_fast.eval.runner); a sample counts as
robust only if it is clean-correct and every stage failed on it. The names are what a report
prints beside its figure and what a config value selects:

* ``pgd-ce``       PGD-k on cross-entropy, every sample: a quick check, never a headline
                   (a model with soft logits defeats CE without being robust);
* ``pgd-ce+cw``    PGD-k CE and PGD-k on the CW margin loss, each on every clean-correct sample;
* ``pgd-ce+dlr``   the same with the DLR margin loss (scale-invariant; needs >= 3 classes);
* ``apgd-ce+dlr``  APGD-CE and APGD-DLR, each on every clean-correct sample;
* ``apgd-ce+t``    APGD-CE and APGD-T (targeted DLR over the top-3 other classes), each on every
                   clean-correct sample: the default, 50 iterations (AutoAttack's first two
                   attacks at half the iterations and a third of the targets);
* ``standard``     APGD-CE -> APGD-T (top-9) -> Square-5000, each on the samples every earlier one
                   failed on.

In the pairs whose stages both attack every clean-correct sample, each attack's accuracy
alone is known on the same samples, so the CE-vs-margin check (diagnostics.ce_vs_margin)
comes for free.
"""
from __future__ import annotations

from ..attacks import APGD, APGDT, PGD, Square, ce_per_sample, cw_loss, dlr_loss
from .runner import Stage

# chosen by measurement on the held-out train slice of three models: docs/evaluation.md,
# "Choosing the default attack pair"
DEFAULT_ATTACKS = "apgd-ce+t"
DEFAULT_STEPS = {"pgd-ce": 20, "pgd-ce+cw": 20, "pgd-ce+dlr": 20, "apgd-ce+dlr": 50, "apgd-ce+t": 50, "standard": 100}
DEFAULT_TARGETS = {"apgd-ce+t": 3, "standard": 9}  # APGD-T's target classes
ATTACK_SETS = tuple(DEFAULT_STEPS)


def _pgd(model, loss, *, eps, norm, steps, restarts, alpha, generator):
    loss_fn = {"CE": ce_per_sample, "CW": cw_loss, "DLR": dlr_loss}[loss]
    return PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts, loss_fn=loss_fn,
               early_stop=True, generator=generator)


def _margin_for(num_classes: int) -> str:
    return "DLR" if num_classes >= 3 else "CW"  # DLR's denominator needs a third logit


def _targeted_or_dlr(model, num_classes, *, eps, norm, steps, restarts, n_targets, generator, scope):
    """APGD-T over the top-k other classes; with 3 classes (targeted DLR needs 4) APGD-DLR."""
    if num_classes >= 4:
        k = min(n_targets, num_classes - 1)
        return Stage(f"APGD-T-{steps}x{k}", APGDT(model, eps=eps, norm=norm, steps=steps, restarts=restarts,
                                                   n_target_classes=k, generator=generator), scope, "margin")
    if num_classes == 3:
        return Stage(f"APGD-DLR-{steps}", APGD(model, eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr",
                                               generator=generator), scope, "margin")
    return None


def build_stages(name, model, num_classes, *, eps, norm, steps=None, restarts=1, alpha=None, n_targets=None,
                 n_queries=5000, generator=None) -> list[Stage]:
    """The stages of attack set ``name`` against ``model`` (attacks seeded by ``generator``);
    ``steps`` and ``n_targets`` default to the set's."""
    if name not in DEFAULT_STEPS:
        raise ValueError(f"unknown attack set {name!r}; choose one of {', '.join(ATTACK_SETS)}")
    steps = steps or DEFAULT_STEPS[name]
    n_targets = n_targets or DEFAULT_TARGETS.get(name, 9)
    kw = dict(eps=eps, norm=norm, steps=steps, restarts=restarts, generator=generator)
    if name == "pgd-ce":
        return [Stage(f"PGD-{steps}", _pgd(model, "CE", alpha=alpha, **kw), "batch")]
    if name.startswith("pgd-ce+"):
        margin = name.split("+")[1].upper()
        if margin == "DLR":
            margin = _margin_for(num_classes)
        return [Stage(f"PGD-{steps}-CE", _pgd(model, "CE", alpha=alpha, **kw), "correct"),
                Stage(f"PGD-{steps}-{margin}", _pgd(model, margin, alpha=alpha, **kw), "correct", "margin")]
    scope = "robust" if name == "standard" else "correct"
    ce = Stage(f"APGD-CE-{steps}", APGD(model, loss="ce", **kw), scope)
    if name == "apgd-ce+dlr":
        if num_classes < 3:
            raise ValueError("apgd-ce+dlr needs >= 3 classes (the DLR loss); use pgd-ce+cw")
        return [ce, Stage(f"APGD-DLR-{steps}", APGD(model, loss="dlr", **kw), "correct", "margin")]
    second = _targeted_or_dlr(model, num_classes, n_targets=n_targets, scope=scope, **kw)
    if second is None and name == "apgd-ce+t":  # 2 classes: no DLR at all; the CW margin instead
        second = Stage(f"PGD-{steps}-CW", _pgd(model, "CW", alpha=None, **kw), scope, "margin")
    stages = [ce] + ([second] if second is not None else [])
    if name == "standard":
        stages.append(Stage(f"Square-{n_queries}", Square(model, eps=eps, norm=norm, n_queries=n_queries,
                                                          generator=generator), "robust", "score"))
    return stages
