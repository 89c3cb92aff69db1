"""The robust-accuracy suites, all through the one batch runner (rrm_fast.eval.runner).

* ``evaluate_worst_case``: the per-sample worst case over a named attack set
  (rrm_fast.eval.attack_sets), with each attack's share, its accuracy alone where it attacked
  every clean-correct sample, and the CE-vs-margin check. The honest default.
* ``evaluate_standard``: the "standard" set (APGD-CE -> APGD-T -> Square), AutoAttack-like.
* ``evaluate_robustness``: PGD-k on cross-entropy with restarts on every sample of a batch (the
  "pgd-ce" set) -- a quick check that a model with soft logits can fool.
"""
from __future__ import annotations

import logging
import time

import torch

from ..attacks import PGD, canonical_norm
from .attack_sets import DEFAULT_ATTACKS, DEFAULT_STEPS, build_stages
from .batches import batch_generator, dataset_batches, n_batches, with_progress_bar
from .diagnostics import ce_vs_margin
from .progress import ProgressFile
from .runner import Stage, aggregate, attack_batch, attack_view, batch_records

log = logging.getLogger("rrm_fast.eval")


def run_suite(model, ds, make_stages, *, eps, norm, batch_size, device, seed, progress, channels_last, progress_file,
              desc) -> dict:
    """Attack ``ds`` batch by batch with ``make_stages(generator)`` (attacks seeded per batch);
    return the summed records (see runner.aggregate)."""
    names = [s.name for s in make_stages(None)]

    def evaluate_batch(start, x, y):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        stages = make_stages(batch_generator(device, seed, start))
        return attack_batch(model, stages, x, y, eps=eps, norm=norm)

    batches = with_progress_bar(dataset_batches(ds, batch_size, device), n_batches(len(ds), batch_size), desc, progress)
    return aggregate(batch_records(batches, evaluate_batch=evaluate_batch, progress_file=progress_file), names)


def evaluate_robustness(model, ds, *, eps, norm="Linf", steps=20, restarts=1, alpha=None, batch_size=500,
                        device="cpu", seed=0, progress=False, channels_last=False, attack_amp=False,
                        progress_file: ProgressFile | None = None, per_sample=False) -> dict:
    """Clean accuracy and PGD-``steps`` accuracy (a sample is robust only if every restart
    fails on it), with the model in eval mode; attacks in fp32 unless ``attack_amp``.
    Each batch's random starts are seeded from (seed, batch start), so results do not depend
    on which batches ran before (resume). ``per_sample`` adds a "robust_mask" bool tensor."""
    norm = canonical_norm(norm)
    model.eval()
    amodel = attack_view(model, device, attack_amp)
    attack_alpha = PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts).alpha  # validates too

    def make_stages(gen):
        return build_stages("pgd-ce", amodel, ds.num_classes, eps=eps, norm=norm, steps=steps, restarts=restarts,
                            alpha=alpha, generator=gen)

    t0 = time.perf_counter()
    tot = run_suite(model, ds, make_stages, eps=eps, norm=norm, batch_size=batch_size, device=device, seed=seed,
                    progress=progress, channels_last=channels_last, progress_file=progress_file,
                    desc=f"eval PGD-{steps}")
    n = tot["n"]
    res = {"n": n, "clean_acc": tot["clean"] / max(n, 1), "robust_acc": tot["robust"] / max(n, 1),
           "attack": f"PGD-{steps}", "restarts": restarts, "eps": eps, "norm": norm, "alpha": attack_alpha,
           "seconds": time.perf_counter() - t0}
    if per_sample:
        res["robust_mask"] = tot["mask"]
    return res


def attack_table(tot: dict, stages: list[Stage]) -> list[dict]:
    """Per-stage rows: run on, fooled (samples no earlier stage had fooled), robust accuracy
    after it (cumulative worst case), alone (when it attacked every clean-correct sample),
    largest perturbation and time."""
    n, robust_n, rows = tot["n"], tot["clean"], []
    for s in stages:
        robust_n -= tot["fooled"][s.name]
        row = {"attack": s.name, "loss": s.loss, "scope": s.scope, "run_on": tot["run_on"][s.name],
               "fooled": tot["fooled"][s.name], "robust_acc_after": robust_n / max(n, 1),
               "max_perturbation": tot["max_size"][s.name], "seconds": tot["seconds"][s.name]}
        if s.name in tot["alone"]:
            row["robust_acc_alone"] = tot["alone"][s.name] / max(n, 1)
        rows.append(row)
    return rows


def margin_check(rows: list[dict], n: int):
    """The CE-vs-margin check from a table whose CE and margin attacks each attacked every
    clean-correct sample (else None: their accuracies alone are not on the same samples)."""
    alone = [r for r in rows if "robust_acc_alone" in r]
    ce = next((r for r in alone if r["loss"] == "ce"), None)
    margin = next((r for r in alone if r["loss"] == "margin"), None)
    if ce is None or margin is None:
        return None
    return ce_vs_margin(ce["attack"], round(ce["robust_acc_alone"] * n), margin["attack"],
                        round(margin["robust_acc_alone"] * n), n)


def evaluate_worst_case(model, ds, *, eps, norm="Linf", attacks=DEFAULT_ATTACKS, steps=None, restarts=1, n_targets=None,
                        n_queries=5000, batch_size=500, device="cpu", seed=0, progress=False, channels_last=False,
                        attack_amp=False, progress_file: ProgressFile | None = None, per_sample=False,
                        log_warnings=True) -> dict:
    """Clean accuracy and the per-sample worst case over the attack set ``attacks`` (see
    rrm_fast.eval.attack_sets), the model in eval mode, judged in fp32 (attacks under autocast
    only with ``attack_amp``). "attack" names what the figure is the worst case over; "attacks"
    breaks it down per attack; "ce_vs_margin" and "warnings" carry the CE-vs-margin check,
    which is also logged when it fires (unless ``log_warnings`` is False: a caller that combines
    partial results, such as one rank of several, logs the combined check instead)."""
    norm = canonical_norm(norm)
    if n_targets is not None and n_targets < 1:
        raise ValueError(f"--n-targets must be >= 1 (got {n_targets})")
    steps = steps or DEFAULT_STEPS.get(attacks)
    model.eval()
    amodel = attack_view(model, device, attack_amp)

    def make_stages(gen):
        return build_stages(attacks, amodel, ds.num_classes, eps=eps, norm=norm, steps=steps, restarts=restarts,
                            n_targets=n_targets, n_queries=n_queries, generator=gen)

    t0 = time.perf_counter()
    tot = run_suite(model, ds, make_stages, eps=eps, norm=norm, batch_size=batch_size, device=device, seed=seed,
                    progress=progress, channels_last=channels_last, progress_file=progress_file,
                    desc=f"eval {attacks}")
    stages = make_stages(None)
    table, n = attack_table(tot, stages), tot["n"]
    check = margin_check(table, n)
    res = {"n": n, "clean_acc": tot["clean"] / max(n, 1), "robust_acc": tot["robust"] / max(n, 1),
           "attack": " -> ".join(s.name for s in stages) if attacks == "standard" else
           "worst of " + ", ".join(s.name for s in stages), "attack_set": attacks, "attacks": table,
           "ce_vs_margin": check, "warnings": [] if check is None or check["ok"] else [check["message"]],
           "restarts": restarts, "eps": eps, "norm": norm, "steps": steps, "seconds": time.perf_counter() - t0}
    if log_warnings:
        log_margin_warnings(res)
    if per_sample:
        res["robust_mask"] = tot["mask"]
    return res


def log_margin_warnings(res: dict) -> None:
    for w in res["warnings"]:
        log.warning("ce_vs_margin: %s", w)


def evaluate_standard(model, ds, *, eps, norm="Linf", steps=100, restarts=1, n_targets=9, n_queries=5000,
                      batch_size=500, device="cpu", seed=0, progress=False, channels_last=False, attack_amp=False,
                      progress_file: ProgressFile | None = None) -> dict:
    """Per-sample worst case over APGD-CE, APGD-T and Square, each run on the samples still robust."""
    res = evaluate_worst_case(model, ds, eps=eps, norm=norm, attacks="standard", steps=steps, restarts=restarts,
                              n_targets=n_targets, n_queries=n_queries, batch_size=batch_size, device=device, seed=seed,
                              progress=progress, channels_last=channels_last, attack_amp=attack_amp,
                              progress_file=progress_file, per_sample=True)
    res.update({"n_targets": n_targets, "n_queries": n_queries})
    return res
