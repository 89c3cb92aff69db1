"""Equal-time claims (``claims --equal-time``): every method trains for the same training seconds.

The question users ask: at the same training time, which model is more robust, and how long
does each take to reach a target? The budget B is the reference method's (PGD-AT's) training
seconds for its epochs in the equal-epoch table, or ``--time-budget SECONDS``; seconds are the
harness's clock (the computing thread's CPU time with --threads 1 on a CPU).

Planning. A method's schedule is stretched over its own epochs, so their number must be known
before its run starts. Each method's epoch time is calibrated by its equal-epoch run, which the
harness trains anyway, in the same session, on the same clock: the median of that run's epoch
seconds (metrics.jsonl). Its equal-time run then plans E = max(1, floor(B (1 + TOLERANCE) / t))
epochs (Free AT asks for E x replays, as it divides its epochs by its replays).

Enforcement. ``TimeBudget`` ends a run at an epoch end when one more epoch at the run's mean pace
so far would take its training time past B (1 + TOLERANCE): a machine slower than at calibration
costs epochs, never extra time. A run whose epochs do not divide B ends below it; every method's
spent seconds are in the table. With B the reference's own time, the reference's equal-time run
is its equal-epoch run.

Claims (issue 15), each with its numbers and a plain verdict: at B, the RRM student (teacher
excluded) has >= 0.95 x the test robust accuracy of the best of PGD-AT, Fast AT and Free AT at B;
it reaches 90 % of the reference's final held-out robust accuracy in <= 1/3 of the reference's
time (teacher excluded; teacher included is reported beside it). Every method's time to that
target is reported, teacher excluded and included.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from ..train import Callback
from . import harness
from .claims_report import label

TOLERANCE = 0.05          # a run may spend up to 5 % over B rather than lose an epoch to timing noise
ROBUST_RATIO = 0.95       # RRM's test robust accuracy against the best adversarial-training baseline at B
TIME_FRACTION = 1 / 3     # RRM's time to the target against the reference's whole time
BASELINES = ("pgd_at", "fast_at", "free_at")


class TimeBudget(Callback):
    """Stops a run at the end of the epoch after which another epoch would overrun ``seconds``
    (plus TOLERANCE) of training time, by the run's own clock (Progress.train_seconds)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_epoch_end(self, trainer, row):
        p = trainer.progress
        if p.finished:
            return
        pace = p.train_seconds / p.epochs_done
        if p.train_seconds + pace > self.seconds * (1 + TOLERANCE):
            p.stopped_early = (f"time budget: {p.train_seconds:.1f} s of {self.seconds:.1f} s spent after {p.epochs_done} "
                               f"epoch(s); one more (~{pace:.1f} s) would overrun it")
            p.finished = True


def epoch_seconds(run_dir) -> float:
    """The median epoch time of a finished run (its calibration for the equal-time run)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["epoch_seconds"] for r in rows)


def plan_epochs(budget: float, per_epoch: float) -> int:
    return max(1, math.floor(budget * (1 + TOLERANCE) / per_epoch))


def run_equal_time(args, configs, rows: dict, teacher: dict | None, clock: str, callbacks, make_row) -> dict:
    """The equal-time runs (trained or reused), their rows and the claims. ``rows``: the
    equal-epoch rows (the calibrations); ``make_row(name, cfg, run)``: claims.result_row."""
    reference = args.reference
    if reference not in rows and args.time_budget is None:
        return {"notes": [f"no {reference} run and no --time-budget: no equal-time runs"]}
    budget = args.time_budget or rows[reference]["train_seconds"]
    out = {}
    for name, cfg in configs:
        if name == reference and args.time_budget is None:
            out[name] = {**rows[name], "planned_epochs": rows[name]["epochs_run"], "calibration_epoch_s": None}
            continue
        per_epoch = epoch_seconds(cfg.out)
        planned = plan_epochs(budget, per_epoch)
        bcfg = dataclasses.replace(cfg, epochs=planned * harness.replays_of(cfg),
                                   out=str(Path(args.runs_dir) / "equal_time" / name))
        run = harness.run_or_reuse(f"{name} (equal time: {planned} epochs, budget {budget:.1f} s)", bcfg, clock=clock,
                                   progress=args.progress, callbacks=[TimeBudget(budget), *callbacks],
                                   tag={"time_budget_s": budget})
        out[name] = {**make_row(name, bcfg, run), "planned_epochs": planned, "calibration_epoch_s": per_epoch}
    return {"budget_s": budget, "budget_source": "--time-budget" if args.time_budget else f"{reference}'s training time",
            "tolerance": TOLERANCE, "rows": out, "method_order": list(out),
            "claims": equal_time_claims(out, teacher, reference, budget)}


def first_time_at(curve: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["robust"] >= target), None)


def equal_time_claims(rows: dict, teacher: dict | None, reference: str, budget: float) -> dict:
    """Issue 15's two equal-time claims, and every method's time to the target."""
    out = {"robust_ratio": ROBUST_RATIO, "time_fraction": TIME_FRACTION, "notes": [], "claims": []}
    if reference not in rows:
        out["notes"].append(f"no {reference} run: no target")
        return out
    target = 0.9 * rows[reference]["curve"][-1]["robust"]
    t_teacher = teacher["train_seconds"] if teacher else 0.0
    out.update(target=target, teacher_seconds=t_teacher)
    for r in rows.values():
        r["time_to_target"] = first_time_at(r["curve"], target)
        r["time_to_target_with_teacher"] = None if r["time_to_target"] is None else \
            r["time_to_target"] + (t_teacher if r["uses_teacher"] else 0.0)
    if "rrm" not in rows:
        out["notes"].append("no rrm run: the table lists the methods, no RRM claims")
        return out
    rrm, present = rows["rrm"], [b for b in BASELINES if b in rows]
    if present:
        best = max(present, key=lambda b: rows[b]["test_robust"])
        ratio = rrm["test_robust"] / rows[best]["test_robust"] if rows[best]["test_robust"] > 0 else None
        out["claims"].append({
            "statement": f"at {budget:.0f} s, the RRM student (teacher excluded) has >= {ROBUST_RATIO:g} x the test robust "
                         f"accuracy of the best of {', '.join(map(label, present))} ({label(best)})",
            "rrm": rrm["test_robust"], "baseline": rows[best]["test_robust"], "baseline_name": best, "ratio": ratio,
            "holds": ratio is None or ratio >= ROBUST_RATIO})
    ref_time = rows[reference]["train_seconds"]
    for key, words in (("time_to_target", "teacher excluded"), ("time_to_target_with_teacher", "teacher included")):
        t = rrm[key]
        out["claims"].append({
            "statement": f"the RRM student reaches 90 % of {label(reference)}'s final held-out robust accuracy in <= 1/3 "
                         f"of {label(reference)}'s time ({words})",
            "rrm_seconds": t, "reference_seconds": ref_time, "ratio": None if t is None else t / ref_time,
            "holds": t is not None and t <= TIME_FRACTION * ref_time})
    return out
