"""The claims harness: robust accuracy against wall-clock training time, and the speed-up claims.

    python -m rrm_fast.bench claims --quick                          # a short version (<= 20 min on 2 CPU cores)
    python -m rrm_fast.bench claims --threads 1                      # the recorded run -> benchmarks/results/claims_cpu
    python -m rrm_fast.bench claims --methods all                    # + the peer methods (KD, KDIGA, ARD, RSLAD, TRADES)

Every method trains the same student architecture (the demo's ``cnn_wide``) on the same
training images, on the same machine, in one session, through the one trainer
(``rrm_fast.train.train_run``). RRM (and each peer with a teacher) uses one Fast-AT
``cnn_small`` teacher, trained first in this session on the same images and timed.

Time series: the trainer's ``metrics.jsonl`` row of every epoch gives clean and PGD-10
accuracy on a held-out slice of the *training* split and the epoch's training seconds; the
curve of a method is (cumulative training seconds, held-out accuracy) at each epoch end. The
training seconds exclude the held-out monitoring and the final evaluation; they are wall-clock
seconds, or with ``--threads 1`` on a CPU (``--clock auto``) the computing thread's CPU seconds,
which other jobs on a shared machine cannot inflate (see ``training_clock``). RRM's curve starts
after its teacher's training time (the teacher's own curve is drawn before it, as in the
paper's figure); "teacher excluded" figures start RRM at 0.

Final figures: each final model (no checkpoint selection; Fast AT's catastrophic-overfitting
guard restores weights on the held-out *train* slice only) is evaluated on the test split with
the same attack, PGD-20 (L-inf eps 0.1, step 2.5*eps/20, one random start), by the trainer.

Claims, each a ratio with the numbers behind it, and a plain "holds" / "DOES NOT HOLD":
  * test split: the RRM student reaches >= 90 % of PGD-AT's test robust accuracy in <= 1/5 of
    PGD-AT's student training time (teacher excluded; and the same with the teacher included);
  * time to target (held-out train slice): target = 90 % of PGD-AT's final held-out robust
    accuracy; for each baseline B, speed-up = B's time to the target / RRM's, teacher excluded
    and included. Times are read at epoch ends, so each is an upper bound on the true time to
    the target (the coarser a method's epochs, the more it is overstated).

Writes OUT/claims.json, OUT/claims.md and OUT/claims.png; each run under --runs-dir (a run
whose report.json was written with the same settings is reused, so an interrupted run resumes;
reused runs are marked, with the load at the time they ran).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..errors import run_cli
from ..methods import METHODS
from ..runtime import resolve_device
from ..train import TrainConfig, train_run
from .machine import LoadSampler, describe_load, load_verdict, describe_machine, summary as machine_summary
from .compare import reusable_report

CORE_METHODS = ("pgd_at", "fast_at", "free_at", "rrm")
# peers whose target is empirical L-inf robustness (CRT / Gaussian augmentation aim at certified L2
# robustness of a smoothed model, which PGD accuracy does not measure; see bench.compare for them)
PEER_METHODS = ("rslad", "kdiga", "ard", "kd", "trades")
METHOD_LABELS = {"pgd_at": "PGD-AT", "fast_at": "Fast AT", "free_at": "Free AT", "rrm": "RRM", "natural": "natural",
                 "rslad": "RSLAD", "kdiga": "KDIGA", "ard": "ARD", "kd": "KD", "trades": "TRADES"}

# Budgets. FULL is the recorded run: ~20-30 min of compute on an idle 2-core CPU (a loaded one
# takes proportionally longer - the load is recorded beside the results); PGD-AT is ~half of
# it, the held-out PGD-10 curves and the test PGD-20 evaluations ~a third. QUICK checks the
# whole pipeline in <= 20 min on the same machine; its figures are too small to support any
# claim. The teacher (Fast AT on the ~4x cheaper cnn_small) gets 2x the students' epochs, and
# still well under PGD-AT's time (both are reported).
FULL = dict(train_size=10000, monitor_size=500, test_size=2000, epochs=4, teacher_epochs=8)
QUICK = dict(train_size=1024, monitor_size=200, test_size=300, epochs=2, teacher_epochs=2)

TARGET_FRACTION = 0.9   # of the reference method's final robust accuracy
TIME_FRACTION = 0.2     # RRM student time <= 1/5 of PGD-AT's (issue 8 acceptance)


# --------------------------------------------------------------------------- configuration
def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.bench claims", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="directory for claims.json/.md/.png (default: "
                                                 "benchmarks/results/claims_<device> for the full run, "
                                                 "runs/claims-quick/results with --quick)")
    p.add_argument("--runs-dir", default=None, help="where each run's directory goes (default runs/claims[-quick])")
    p.add_argument("--cache", default=None, help="teacher cache for this harness (default RUNS_DIR/cache: the teacher "
                                                  "is trained and timed in the same session as the students)")
    p.add_argument("--quick", action="store_true", help=f"short budget {QUICK} instead of {FULL}")
    p.add_argument("--methods", default=",".join(CORE_METHODS),
                   help=f"comma-separated methods, or 'all' (= {', '.join(CORE_METHODS + PEER_METHODS)})")
    p.add_argument("--reference", default="pgd_at", help="method whose final robust accuracy sets the target")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--student", default="cnn_wide", help="the one student architecture every method trains")
    p.add_argument("--teacher", default="cnn_small")
    p.add_argument("--teacher-method", default="fast_at")
    for key in ("train_size", "monitor_size", "test_size", "epochs", "teacher_epochs"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"default {FULL[key]} ({QUICK[key]} with --quick)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--attack-steps", type=int, default=7, help="training PGD steps (PGD-AT and PGD-based peers)")
    p.add_argument("--alpha", type=float, default=0.025, help="training PGD step (METHODS.md: 0.01-0.025 for eps 0.1)")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps of the final test-split evaluation")
    p.add_argument("--monitor-steps", type=int, default=10, help="PGD steps of the held-out curve points")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-fraction", type=float, default=TARGET_FRACTION)
    p.add_argument("--time-fraction", type=float, default=TIME_FRACTION)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for every run (default: torch's). On a loaded shared CPU, 1 can be "
                        "much faster than 2: OpenMP's barrier waits for a descheduled thread")
    p.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                   help="what times the epochs: cpu = the computing thread's CPU time (CPU, --threads 1 only: the "
                        "machine-alone time, immune to other jobs' load), wall = wall-clock; auto = cpu where "
                        "possible, else wall")
    p.add_argument("--progress", action="store_true", help="progress bars for each run")
    return p


def parse_methods(spec: str) -> list[str]:
    names = list(CORE_METHODS + PEER_METHODS) if spec.strip() == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(sorted(METHODS))} or 'all'")
    if not names:
        raise ValueError("--methods is empty; name at least one method")
    return list(dict.fromkeys(names))


def method_configs(args) -> list[tuple[str, TrainConfig]]:
    budget = QUICK if args.quick else FULL
    size = {k: getattr(args, k) if getattr(args, k) is not None else budget[k] for k in budget}
    if args.teacher_method not in METHODS or METHODS[args.teacher_method].needs_teacher:
        raise ValueError(f"--teacher-method {args.teacher_method!r} must train without a teacher (e.g. fast_at, pgd_at)")
    common = dict(student=args.student, dataset=args.dataset, eps=args.eps, alpha=args.alpha,
                  attack_steps=args.attack_steps, eval_steps=args.eval_steps, eval_restarts=1,
                  monitor_steps=args.monitor_steps, lr=args.lr, seed=args.seed, teacher_method=args.teacher_method,
                  amp=False, **size)
    out = []
    for name in parse_methods(args.methods):
        cls = METHODS[name]
        if cls.needs_teacher:
            # RRM as in the demo: the teacher's head copied into the (projected) student; logit
            # matchers keep their own head (the widths differ, and their papers start from scratch)
            head = "teacher" if "features" in cls.teacher_outputs else "random"
            cfg = TrainConfig(method=name, teacher=args.teacher, head_init=head, **common)
        else:
            cfg = TrainConfig(method=name, **common)
        cfg.out = str(Path(args.runs_dir) / name)
        out.append((name, cfg))
    return out


# --------------------------------------------------------------------------- the training clock
class _ThreadClock:
    """Stands in for the ``time`` module inside rrm_fast.train during a run: ``perf_counter``
    reads the calling thread's CPU time, everything else is the real module."""

    def perf_counter(self) -> float:
        return time.thread_time()

    def __getattr__(self, name):
        return getattr(time, name)


def resolve_clock(clock: str, device: str) -> str:
    """auto: the thread's CPU time on a CPU with one torch thread, else wall time."""
    import rrm_fast.train as train_module

    if clock == "auto":
        clock = "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"
    if clock == "cpu":
        if device != "cpu" or torch.get_num_threads() != 1:
            raise ValueError("--clock cpu needs a CPU run with --threads 1: the work must all run on the calling thread "
                             "for its CPU time to be the step's time")
        if getattr(train_module, "time", None) is not time:
            raise ValueError("rrm_fast.train no longer times epochs with time.perf_counter from `import time`; "
                             "--clock cpu cannot read its epochs - use --clock wall")
    return clock


@contextlib.contextmanager
def training_clock(clock: str):
    """Time the trainer's epochs (and nothing else) with ``clock``.

    "cpu": the computing thread's CPU time. On a shared machine wall time measures the other
    jobs as much as the method - here, runs of the same session saw load averages from ~6 to
    ~13 on 2 cores, so a run's wall time depended on when it ran. With one torch thread all of
    a training step runs on the calling thread (process CPU time == thread CPU time over a
    step), so its CPU time is the wall time the epoch takes on this machine with nothing else
    running (other jobs still share its caches and memory bandwidth)."""
    import rrm_fast.train as train_module

    if clock != "cpu":
        yield
        return
    train_module.time = _ThreadClock()
    try:
        yield
    finally:
        train_module.time = time


# --------------------------------------------------------------------------- running


def read_curve(metrics_path: Path) -> list[dict]:
    """(cumulative training seconds, held-out clean/robust accuracy) at each epoch end."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    t, curve = 0.0, []
    for r in rows:
        t += r["epoch_seconds"]
        curve.append({"epoch": r["epoch"], "seconds": t, "clean": r["heldout_clean_acc"],
                      "robust": r["heldout_robust_acc"], "attack": r.get("heldout_attack")})
    return curve


def run_one(name: str, cfg: TrainConfig, progress: bool, clock: str) -> dict:
    report = reusable_report(cfg)
    meta_path = Path(cfg.out) / "claims_run.json"
    if report is not None and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("clock", "wall") == clock:
            print(f"== {name}: reusing the finished run in {cfg.out}")
            meta["reused"] = True
            return {"report": report, **meta}
    print(f"== {name}", flush=True)
    started, started_epoch = time.strftime("%Y-%m-%d %H:%M:%S"), time.time()
    with LoadSampler(interval=15.0) as load, training_clock(clock):
        t0 = time.perf_counter()
        report = train_run(cfg, progress=progress, exist_ok=True)
        wall = time.perf_counter() - t0
    meta = {"wall_seconds": wall, "started": started, "started_epoch": started_epoch, "load": load.stats(),
            "torch_threads": torch.get_num_threads(), "clock": clock, "reused": False}
    atomic_write_json(meta_path, meta)
    return {"report": report, **meta}


def run_span(run: dict) -> tuple[float, float]:
    """(start, end) of a run in seconds since the epoch."""
    start = run.get("started_epoch") or time.mktime(time.strptime(run["started"], "%Y-%m-%d %H:%M:%S"))
    return start, start + run["wall_seconds"]


def merge_loads(loads: list[dict]) -> dict:
    """One load summary for several runs: extremes over all, median of the runs' medians."""
    return {"cores": loads[0]["cores"], "start": loads[0]["start"], "end": loads[-1]["end"],
            "min": min(x["min"] for x in loads), "median": round(statistics.median(x["median"] for x in loads), 2),
            "max": max(x["max"] for x in loads), "samples": sum(x["samples"] for x in loads),
            "interval_s": loads[0]["interval_s"]}


def teacher_info(report_path: str | None, trained_here: bool) -> dict | None:
    if not report_path:
        return None
    path = Path(report_path)
    rep = json.loads(path.read_text())
    return {"arch": rep["student"], "method": rep["method"], "epochs_run": rep["epochs_run"],
            "train_seconds": rep["train_seconds"], "images_per_second": rep["images_per_second"],
            "test": rep["test"], "curve": read_curve(path.parent / "metrics.jsonl"), "report": str(path),
            "checkpoint": rep["checkpoint"], "trained_in_this_session": trained_here}


def first_time_at(curve: list[dict], target: float, key: str = "robust") -> float | None:
    for p in curve:
        if p[key] >= target:
            return p["seconds"]
    return None


# --------------------------------------------------------------------------- claims
def compute_claims(rows: dict, teacher: dict | None, reference: str, target_fraction: float,
                   time_fraction: float) -> dict:
    """Every claim as numbers, a ratio and a verdict (see the module docstring)."""
    out = {"reference": reference, "target_fraction": target_fraction, "time_fraction": time_fraction,
           "test": [], "time_to_target": [], "notes": []}
    if reference not in rows:
        out["notes"].append(f"no {reference} run: no target, no claims")
        return out
    ref = rows[reference]
    target = target_fraction * ref["curve"][-1]["robust"]
    out["target"] = target
    out["target_definition"] = (f"{target_fraction:g} x {METHOD_LABELS.get(reference, reference)}'s final held-out "
                                f"robust accuracy ({100 * ref['curve'][-1]['robust']:.1f} %)")
    t_teacher = teacher["train_seconds"] if teacher else 0.0
    for name, r in rows.items():
        r["time_to_target"] = first_time_at(r["curve"], target)
        r["time_to_target_with_teacher"] = (None if r["time_to_target"] is None
                                            else r["time_to_target"] + (t_teacher if r["uses_teacher"] else 0.0))
    if "rrm" not in rows:
        out["notes"].append("no rrm run: the table lists the methods, no RRM claims")
        return out
    rrm = rows["rrm"]
    if teacher and teacher["test"]["robust_acc"] > 0:
        # how much of its teacher's robustness the student kept: where a claim fails on accuracy,
        # this separates "the teacher was too weak" from "the transfer lost too much"
        out["transfer"] = {"teacher_test_robust": teacher["test"]["robust_acc"], "rrm_test_robust": rrm["test_robust"],
                           "ratio": rrm["test_robust"] / teacher["test"]["robust_acc"],
                           "teacher_vs_reference": (teacher["test"]["robust_acc"] / ref["test_robust"]
                                                    if ref["test_robust"] > 0 else None)}

    # --- test split, final models: accuracy ratio and time ratio against each baseline
    for name, b in rows.items():
        if name == "rrm":
            continue
        # a baseline with no robust accuracy at all is matched by anything (ratio undefined)
        acc_ratio = rrm["test_robust"] / b["test_robust"] if b["test_robust"] > 0 else None
        acc_ok = acc_ratio is None or acc_ratio >= target_fraction
        for with_teacher in (False, True):
            t_rrm = rrm["train_seconds"] + (t_teacher if with_teacher else 0.0)
            t_b = b["train_seconds"] + (t_teacher if with_teacher and b["uses_teacher"] else 0.0)
            time_ratio = t_rrm / t_b
            claim = {"baseline": name, "teacher_included": with_teacher,
                     "rrm_test_robust": rrm["test_robust"], "baseline_test_robust": b["test_robust"],
                     "robust_ratio": acc_ratio, "rrm_seconds": t_rrm, "baseline_seconds": t_b,
                     "time_ratio": time_ratio, "speedup": 1 / time_ratio}
            if name == reference:  # the acceptance claim of issue 8
                claim["statement"] = (f"RRM student reaches >= {target_fraction:.0%} of {METHOD_LABELS.get(name, name)}'s "
                                      f"test robust accuracy in <= {time_fraction:g} of its training time"
                                      + (" (teacher included)" if with_teacher else " (teacher excluded)"))
                claim["holds"] = acc_ok and time_ratio <= time_fraction
            else:
                claim["statement"] = (f"RRM student reaches >= {target_fraction:.0%} of {METHOD_LABELS.get(name, name)}'s "
                                      f"test robust accuracy in less training time"
                                      + (" (teacher included)" if with_teacher else " (teacher excluded)"))
                claim["holds"] = acc_ok and time_ratio < 1.0
            out["test"].append(claim)

    # --- held-out curves: time to the target, RRM against each baseline
    for name, b in rows.items():
        if name == "rrm":
            continue
        for with_teacher in (False, True):
            key = "time_to_target_with_teacher" if with_teacher else "time_to_target"
            t_rrm, t_b = rrm[key], b[key]
            c = {"baseline": name, "teacher_included": with_teacher, "rrm_seconds": t_rrm, "baseline_seconds": t_b,
                 "statement": f"RRM reaches the target before {METHOD_LABELS.get(name, name)}"
                              + (" (teacher included)" if with_teacher else " (teacher excluded)")}
            if t_rrm is None:
                c.update(speedup=None, holds=False, why="RRM never reached the target within its budget")
            elif t_b is None:
                budget = b["train_seconds"] + (t_teacher if with_teacher and b["uses_teacher"] else 0.0)
                c.update(speedup=budget / t_rrm, speedup_is_lower_bound=True, holds=True,
                         why=f"{METHOD_LABELS.get(name, name)} never reached the target; speed-up >= its whole budget / RRM's time")
            else:
                c.update(speedup=t_b / t_rrm, holds=t_b > t_rrm)
            out["time_to_target"].append(c)
    return out


# --------------------------------------------------------------------------- outputs
def fmt_s(v) -> str:
    return "never" if v is None else secs(v)


def secs(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def ratio_s(v) -> str:
    return "n/a (baseline 0)" if v is None else f"{v:.3f}"


def render_markdown(res: dict) -> str:
    s, m, cl = res["settings"], res["machine"], res["claims"]
    t = res["teacher"]
    lines = [f"# Claims: robust accuracy against training time ({s['dataset']}, {m['device']})", "",
             f"Produced by `{res['command']}`: runs from {res['started']} to {res['finished']} "
             f"({res['wall_seconds'] / 60:.1f} min), on {m['summary']}; {describe_load(res['load'])} during the runs "
             f"(median of the runs' medians). {load_verdict(res['load'], m.get('torch_threads', 1))}; "
             "all methods ran in the same session, so the ratios compare like with like."
             + (f" Rendered {res['rendered']}, reusing the finished runs of an earlier invocation "
                f"({', '.join(res['reused_runs'])}) with their own times." if res["reused_runs"] else ""), ""]
    if res["quick"]:
        lines += ["**Quick run** (`--quick`): a pipeline check on a tiny budget; its figures support no claim.", ""]
    lines += [f"Setup: student `{s['student']}` for every method, {s['train_size']} training images "
              f"(+{s['monitor_size']} held out from the training split for the curves), batch {s['batch_size']}, "
              f"{s['epochs']} epoch(s) (Free AT: {s['epochs']} / {s['free_at_replays']} replays, rounded, at least 1), "
              f"SGD lr {s['lr']} momentum {s['momentum']} wd {s['weight_decay']}, cosine schedule (cyclic for Fast AT), "
              f"fp32, channels_last. L-inf eps = {s['eps']:g}; training PGD {s['attack_steps']} steps of {s['alpha']:g}. "
              + (f"Teacher: `{t['arch']}` trained by `{t['method']}` for {t['epochs_run']} epoch(s) on the same images"
                 f"{'' if t['trained_in_this_session'] else ' (reused from the cache, trained in an earlier session)'}; "
                 "RRM's student starts with the teacher's head (the demo's setting)." if t else ""), "",
              f"Curves: clean and {s['monitor_attack']} accuracy on the held-out training slice at each epoch end, against "
              f"cumulative training seconds (epochs only: no monitoring, no evaluation), {CLOCK_TEXT[s['clock']]}. "
              "Final figures: clean and "
              f"{s['eval_attack']} accuracy on the first {s['test_size']} images of the test split, every final model "
              "alike; nothing is selected on the test split.", "",
              "## Results", "",
              "| method | teacher s | student s | run wall s | load | epochs | final held-out clean % | "
              f"final held-out robust % | test clean % | test {s['eval_attack']} % | time to target s | with teacher s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if t:
        lines.append(f"| teacher ({t['method']} {t['arch']}) | {secs(t['train_seconds'])} | - | - | - | {t['epochs_run']} | "
                     f"{100 * t['curve'][-1]['clean']:.1f} | {100 * t['curve'][-1]['robust']:.1f} | "
                     f"{100 * t['test']['clean_acc']:.2f} | {100 * t['test']['robust_acc']:.2f} | - | - |")
    for name, r in res["rows"].items():
        # mark reuse per row only when this report mixes runs of different invocations
        note = " (reused run)" if r["reused"] and len(res["reused_runs"]) < len(res["rows"]) else ""
        t_s = secs(t["train_seconds"]) if r["uses_teacher"] and t else "-"
        lines.append(f"| {METHOD_LABELS.get(name, name)}{note} | {t_s} | "
                     f"{secs(r['train_seconds'])} | {r['wall_seconds']:.0f} | {r['run_load']['median']:g} | {r['epochs_run']} | "
                     f"{100 * r['curve'][-1]['clean']:.1f} | {100 * r['curve'][-1]['robust']:.1f} | "
                     f"{100 * r['test_clean']:.2f} | {100 * r['test_robust']:.2f} | {fmt_s(r.get('time_to_target'))} | "
                     f"{fmt_s(r.get('time_to_target_with_teacher')) if r['uses_teacher'] else '-'} |")
    for name, r in res["rows"].items():
        if r["stopped_early"]:
            lines.append(f"\n{METHOD_LABELS.get(name, name)}: {r['stopped_early']} (held-out training slice).")
    lines += ["", f"*teacher s*, *student s*: training seconds ({s['clock']} clock). "
              "*run wall s* (wall clock) includes the per-epoch monitoring and the final test evaluation (and, for the first "
              "run with a teacher, training that teacher). *load*: median 1-min load average during that run (runs "
              "with a teacher ran first). *time to target* is read at epoch ends: an upper bound.", ""]
    lines += ["## Claims", ""]
    if "target" in cl:
        lines += [f"Target for the time-to-target claims: {100 * cl['target']:.1f} % held-out robust accuracy = "
                  f"{cl['target_definition']}.", ""]
    lines += [f"- {n}" for n in cl["notes"]]
    if "transfer" in cl:
        tr = cl["transfer"]
        ref_label = METHOD_LABELS.get(cl["reference"], cl["reference"])
        vs_ref = ("" if tr["teacher_vs_reference"] is None else
                  f"; the teacher itself has {tr['teacher_vs_reference']:.3f} x {ref_label}'s test robust accuracy")
        lines += [f"Transfer: the RRM student keeps {tr['ratio']:.3f} of its teacher's test robust accuracy "
                  f"({100 * tr['rrm_test_robust']:.2f} % of {100 * tr['teacher_test_robust']:.2f} %){vs_ref}.", ""]
    if cl["test"]:
        lines += ["### Final models, test split", "",
                  "| claim | RRM robust % | baseline robust % | robust ratio | RRM s | baseline s | time ratio | speed-up | verdict |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in cl["test"]:
            lines.append(f"| {c['statement']} | {100 * c['rrm_test_robust']:.2f} | {100 * c['baseline_test_robust']:.2f} | "
                         f"{ratio_s(c['robust_ratio'])} | {secs(c['rrm_seconds'])} | {secs(c['baseline_seconds'])} | "
                         f"{c['time_ratio']:.3f} | {c['speedup']:.1f}x | {'holds' if c['holds'] else '**DOES NOT HOLD**'} |")
        lines.append("")
    if cl["time_to_target"]:
        lines += ["### Time to the target, held-out training slice", "",
                  "| claim | RRM s | baseline s | speed-up | verdict |", "|---|---:|---:|---:|---|"]
        for c in cl["time_to_target"]:
            sp = "-" if c["speedup"] is None else (">= " if c.get("speedup_is_lower_bound") else "") + f"{c['speedup']:.1f}x"
            why = f" ({c['why']})" if c.get("why") else ""
            lines.append(f"| {c['statement']} | {fmt_s(c['rrm_seconds'])} | {fmt_s(c['baseline_seconds'])} | {sp} | "
                         f"{'holds' if c['holds'] else '**DOES NOT HOLD**'}{why} |")
        lines.append("")
    lines += ["## Curves (held-out training slice)", "", f"![robust accuracy against training time]({res['plot']})", "",
              "| method | epoch | cumulative train s | (with teacher s) | clean % | robust % |", "|---|---:|---:|---:|---:|---:|"]
    if t:
        for p in t["curve"]:
            lines.append(f"| teacher | {p['epoch']} | {secs(p['seconds'])} | - | {100 * p['clean']:.1f} | {100 * p['robust']:.1f} |")
    for name, r in res["rows"].items():
        shift = t["train_seconds"] if (t and r["uses_teacher"]) else None
        for p in r["curve"]:
            shifted = "-" if shift is None else secs(shift + p["seconds"])
            lines.append(f"| {METHOD_LABELS.get(name, name)} | {p['epoch']} | {secs(p['seconds'])} | {shifted} | "
                         f"{100 * p['clean']:.1f} | {100 * p['robust']:.1f} |")
    lines.append("")
    return "\n".join(lines)


CLOCK_TEXT = {
    "cpu": "timed as the CPU seconds of the one computing thread (1 torch thread): the wall time of the epoch on this "
           "machine with nothing else running, which the other jobs' load cannot inflate (they still share caches and "
           "memory bandwidth)",
    "wall": "timed by the wall clock (synchronised)"}
CLOCK_AXIS = {"cpu": "training time (s): epochs only, CPU time of the one computing thread",
              "wall": "training wall-clock time (s), epochs only"}

COLORS = {"pgd_at": "tab:red", "fast_at": "tab:orange", "free_at": "tab:purple", "rrm": "tab:blue",
          "natural": "tab:gray", "rslad": "tab:green", "kdiga": "tab:olive", "ard": "tab:cyan", "kd": "tab:pink",
          "trades": "tab:brown"}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rows, cl = res["teacher"], res["rows"], res["claims"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, title in ((axes[0], "robust", f"held-out {res['settings']['monitor_attack']} accuracy"),
                           (axes[1], "clean", "held-out clean accuracy")):
        for name, r in rows.items():
            color = COLORS.get(name)
            label = METHOD_LABELS.get(name, name)
            xs = [p["seconds"] for p in r["curve"]]
            ys = [100 * p[key] for p in r["curve"]]
            if r["uses_teacher"] and t:
                tx = [p["seconds"] for p in t["curve"]]
                ty = [100 * p[key] for p in t["curve"]]
                T = t["train_seconds"]
                ax.plot(tx, ty, ls=":", marker=".", color=color, alpha=0.8,
                        label=f"{label}: teacher ({t['method']} {t['arch']})" if name == "rrm" else None)
                ax.axvline(T, color=color, lw=0.6, ls=":", alpha=0.5)
                ax.plot([T + x for x in xs], ys, marker="o", color=color, label=f"{label} (teacher time included)")
                if name == "rrm":
                    ax.plot(xs, ys, marker="o", mfc="none", ls="--", color=color, alpha=0.45,
                            label=f"{label} student only (teacher excluded)")
            else:
                ax.plot(xs, ys, marker="o", color=color, label=label)
        if key == "robust" and "target" in cl:
            ax.axhline(100 * cl["target"], color="k", lw=0.8, ls="--",
                       label=f"target {100 * cl['target']:.1f} % ({cl['target_fraction']:g} x {METHOD_LABELS.get(cl['reference'], cl['reference'])})")
        ax.set_xlabel(CLOCK_AXIS[res["settings"]["clock"]])
        ax.set_ylabel(f"{title} (%)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    m = res["machine"]
    fig.suptitle(f"{res['settings']['dataset']}, student {res['settings']['student']}, L-inf eps {res['settings']['eps']:g}"
                 f" — {m['cpu'] if m['device'] == 'cpu' else m.get('gpu')}, load {res['load']['median']:g} on "
                 f"{res['load']['cores']} cores" + (" — QUICK (no claim)" if res["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def run_claims(args, argv) -> dict:
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_claims(args, argv)
    finally:
        torch.set_num_threads(threads_before)  # a library caller's setting survives the call


def _run_claims(args, argv) -> dict:
    if args.runs_dir is None:
        args.runs_dir = "runs/claims-quick" if args.quick else "runs/claims"
    os.environ["RRM_FAST_CACHE"] = str(Path(args.cache or Path(args.runs_dir) / "cache").resolve())
    configs = method_configs(args)
    if args.reference not in [n for n, _ in configs]:
        print(f"note: --reference {args.reference} is not among --methods: no target, no claims")
    device_kind = resolve_device(configs[0][1].device).type
    # a quick run never overwrites the recorded results
    out = Path(args.out or ("runs/claims-quick/results" if args.quick else f"benchmarks/results/claims_{device_kind}"))
    out.mkdir(parents=True, exist_ok=True)
    rows, runs, teacher_report = {}, {}, None
    # Methods with a teacher run first (the teacher is trained by the first of them): on a shared
    # machine whose load eases as the session goes on, that order favours the baselines, not RRM.
    # Each run's own load is recorded beside its times.
    order = sorted(configs, key=lambda nc: not METHODS[nc[0]].needs_teacher)
    clock = resolve_clock(args.clock, device_kind)
    for name, cfg in order:
        run = runs[name] = run_one(name, cfg, args.progress, clock)
        rep = run["report"]
        teacher_report = teacher_report or rep.get("teacher_report")
        rows[name] = {"method": name, "uses_teacher": METHODS[name].needs_teacher, "epochs_run": rep["epochs_run"],
                      "train_seconds": rep["train_seconds"], "images_per_second": rep["images_per_second"],
                      "wall_seconds": run["wall_seconds"], "reused": run["reused"], "run_load": run["load"],
                      "curve": read_curve(Path(cfg.out) / "metrics.jsonl"), "test_clean": rep["test"]["clean_acc"],
                      "test_robust": rep["test"]["robust_acc"], "test": rep["test"],
                      "stopped_early": rep["stopped_early"], "run_dir": cfg.out, "precision": rep["precision"],
                      "device": rep["device"], "started": run["started"], "torch_threads": run.get("torch_threads")}
    rows = {name: rows[name] for name, _ in configs}  # table order: as --methods lists them
    # the session = the runs' own span (runs reused from an earlier invocation keep their times)
    spans = [run_span(r) for r in runs.values()]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    teacher = None
    if teacher_report:
        # trained in this session iff its report was written while these runs were going
        mtime = Path(teacher_report).stat().st_mtime
        teacher = teacher_info(teacher_report, trained_here=first <= mtime <= last)
    machine = describe_machine(next(iter(rows.values()))["device"])
    machine.pop("loadavg")  # this process's moment; the runs' load is res["load"] and each row's run_load
    threads = {r["torch_threads"] for r in rows.values() if r["torch_threads"] is not None}
    if len(threads) == 1:  # the threads the runs used, not this (possibly re-rendering) process's
        machine["torch_threads"] = threads.pop()
        machine["summary"] = machine_summary(machine)
    base = configs[0][1]
    free_at_replays = METHODS["free_at"].options["replays"].default
    settings = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("method", "teacher", "out", "head_init")}
    settings.update(teacher=args.teacher, free_at_replays=free_at_replays, quick=args.quick,
                    monitor_attack=f"PGD-{base.monitor_steps}", eval_attack=f"PGD-{base.eval_steps}", clock=clock)
    res = {"command": "python -m rrm_fast.bench claims " + " ".join(shlex.quote(a) for a in argv),
           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first)),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)),
           "wall_seconds": last - first, "rendered": time.strftime("%Y-%m-%d %H:%M:%S"),
           "reused_runs": [n for n, r in rows.items() if r["reused"]], "quick": args.quick, "machine": machine,
           "load": merge_loads([r["load"] for r in runs.values()]), "settings": settings, "teacher": teacher,
           "rows": rows, "method_order": list(rows),  # the JSON file sorts keys; this keeps --methods' order
           "plot": "claims.png"}
    res["claims"] = compute_claims(rows, teacher, args.reference, args.target_fraction, args.time_fraction)
    plot(res, out / "claims.png")
    md = render_markdown(res)
    atomic_write_json(out / "claims.json", res)
    (out / "claims.md").write_text(md)
    print(md)
    print(f"-> {out / 'claims.json'}, {out / 'claims.md'}, {out / 'claims.png'}")
    return res


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run():
        args = build_parser().parse_args(argv)
        run_claims(args, argv)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
