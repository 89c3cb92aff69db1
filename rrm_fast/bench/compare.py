"""Every training method on one task: same teacher, same student architecture, same epochs.

    python -m rrm_fast.bench.compare --threads 1 --out benchmarks/results   # the recorded comparison
    python -m rrm_fast.bench.compare --quick --out /tmp/cmp               # a smoke run in a few minutes

Each method is one ``train_run`` with the settings below (methods with a teacher share the one
cached, architecture-named teacher); the table reports clean and robust accuracy on the same
test images - the per-sample worst case of the trainer's ``--eval-attacks`` (default APGD-CE-50
and APGD-T-50x3), and the standard suite on the first ``--standard-size`` of them, both named
from the runs' reports, with any CE-vs-margin warning under the table - the training time (epochs only: no teacher, no monitoring, no final evaluation)
and the whole run's wall time. The CRT chain (a Gaussian-augmentation teacher, then a CRT
student with the same sigma) is an extra row: CRT's goal is certified L2 robustness of the
smoothed model, so its robust figure is only the base classifier's. Teachers are attacked
exactly as the students (rrm_fast.train.check.checkpoint_figures).

Writes OUT/method_comparison_<dataset>.json and .md, and each run under --runs-dir (default
runs/compare; a finished run with the same settings and clock is reused, so an interrupted
comparison resumes where it stopped: harness.py).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from ..attacks import default_step
from ..errors import OneLineArgumentParser, run_cli
from ..io import check_output_dir
from ..methods import METHODS
from ..runtime import resolve_device
from ..train import TrainConfig
from ..train.check import checkpoint_figures
from ..train.config import check_teacher_method, validate_config
from ..validation import whole_number
from . import harness
from .machine import describe_load
from .robust_figures import CE_ONLY_NOTE, attack_name, ce_only, standard_cell, standard_heading, standard_sentence, warning_lines

METHOD_ORDER = ("natural", "pgd_at", "fast_at", "free_at", "rrm", "rslad", "kdiga", "ard", "kd", "trades", "crt")
# extra rows: a method with one setting changed. crt_chain: CRT with its own gaussian_aug teacher
# (the paper's setting); rrm_teacher_head: RRM with the built-in demo's --head-init teacher (the
# student's classifier starts as a copy of the teacher's), to show what that copy is worth.
VARIANTS = {"crt_chain": ("crt", {"teacher_method": "gaussian_aug"}),
            "rrm_teacher_head": ("rrm", {"head_init": "teacher"})}
# a training loss above this (or not finite) is reported as divergence: CE at chance is log(C) and a
# distillation KL is bounded by the teacher's entropy, so no method here legitimately comes near it
DIVERGED_LOSS = 1e3

# the recorded comparison's budget (benchmarks/results/method_comparison_fmnist.md), sized for a
# shared 2-core CPU: two epochs of 6000 images, the honest pair on the first 1000 test images (eval_steps
# None: the set's own) and the standard suite on the first 200 (--standard-queries 1000 is the
# measured CPU cut, docs/evaluation.md). The committed table predates this (CE-only PGD-20).
FULL = dict(train_size=6000, test_size=1000, monitor_size=200, epochs=2, teacher_epochs=3, eval_steps=None,
            standard_size=200, standard_queries=5000)
QUICK = dict(train_size=1000, test_size=200, monitor_size=100, epochs=1, teacher_epochs=1, eval_steps=5,
             standard_size=20, standard_queries=100)


def build_parser():
    p = OneLineArgumentParser(prog="python -m rrm_fast.bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for the results files (JSON + Markdown)")
    p.add_argument("--runs-dir", default="runs/compare", help="where each method's run directory goes")
    p.add_argument("--quick", action="store_true", help=f"small smoke budget {QUICK} instead of {FULL}")
    p.add_argument("--methods", default=",".join(METHOD_ORDER + tuple(VARIANTS)),
                   help=f"comma-separated methods (default all: {', '.join(METHOD_ORDER + tuple(VARIANTS))})")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--student", default="cnn_small", help="the one student architecture every method trains")
    p.add_argument("--teacher", default="cnn_small", help="architecture of the shared teacher")
    p.add_argument("--teacher-method", default="fast_at", help="how the shared teacher is trained")
    p.add_argument("--head-init", default="random", choices=["random", "teacher"],
                   help="applied to every method with a teacher (default random, as the papers train; teacher: the "
                        "student starts with a copy of the teacher's classifier, needs equal phi widths)")
    for key in ("train_size", "test_size", "monitor_size", "epochs", "teacher_epochs"):
        p.add_argument("--" + key.replace("_", "-"), type=whole_number, default=None, help=f"default {FULL[key]} ({QUICK[key]} with --quick)")
    harness.add_eval_arguments(p, FULL, QUICK)
    p.add_argument("--attack-steps", type=whole_number, default=7, help="training PGD steps (pgd_at, trades, rslad, ard)")
    p.add_argument("--batch-size", type=whole_number, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--sigma", type=float, default=0.25, help="noise of the CRT chain's teacher and student")
    p.add_argument("--seed", type=whole_number, default=0)
    p.add_argument("--tag", default=None, help="suffix of the results files' names, for a second table with other settings")
    harness.add_run_arguments(p, clock_default="wall")
    return p


def method_configs(args) -> list[tuple[str, TrainConfig]]:
    size = harness.budget(args, FULL, QUICK)
    names = harness.select_methods(args.methods, METHOD_ORDER + tuple(VARIANTS), VARIANTS)
    check_teacher_method(args.teacher_method)
    common = dict(student=args.student, dataset=args.dataset, eps=args.eps, attack_steps=args.attack_steps,
                  batch_size=args.batch_size, **harness.eval_settings(args), seed=args.seed,
                  teacher_method=args.teacher_method, **size)
    out = []
    for name in names:
        method, changed = VARIANTS.get(name, (name, {}))
        if METHODS[method].needs_teacher:
            opts = {"sigma": args.sigma} if method == "crt" else {}
            cfg = TrainConfig(**{**common, "method": method, "teacher": args.teacher, "head_init": args.head_init,
                                 "method_options": opts, **changed})
        else:
            cfg = TrainConfig(**{**common, "method": method, **changed})
        cfg.out = str(Path(args.runs_dir) / name)
        validate_config(cfg)  # a bad value is one line before any training, not after hours of it
        out.append((name, cfg))
    return out


def row_from(name, cfg, report, wall_seconds) -> dict:
    replays = harness.replays_of(cfg)
    return {"name": name, "method": cfg.method, "paper": METHODS[cfg.method].paper,
            "teacher": f"{cfg.teacher_method} {cfg.teacher}" if cfg.teacher else None,
            "head_init": cfg.head_init if cfg.teacher else None, "replays": replays,
            "method_options": cfg.method_options, **figures_of(report),
            "epochs_run": report["epochs_run"], "train_seconds": report["train_seconds"],
            "images_per_second": report["images_per_second"], "wall_seconds": wall_seconds,
            "heldout_attack": harness.read_curve(Path(cfg.out) / "metrics.jsonl")[-1]["attack"],
            "stopped_early": report["stopped_early"], "device": report["device"], "precision": report["precision"],
            "notes": training_notes(Path(cfg.out)), "wall_includes_teacher": trained_its_teacher(Path(cfg.out), report, wall_seconds),
            "run_dir": str(Path(cfg.out))}


def figures_of(report: dict) -> dict:
    """A report's test figures as a table row's: clean, robust (named), standard, warnings."""
    test, standard = report["test"], report.get("test_standard")
    return {"clean_acc": test["clean_acc"], "robust_acc": test["robust_acc"], "test": test,
            "attack": f"{test['attack']} ({test['norm']} eps={test['eps']:g}"
                      + (f", {test['restarts']} restarts)" if test["restarts"] > 1 else ")"),
            "standard": standard and {k: standard[k] for k in ("n", "robust_acc", "attack", "seconds")}}


def training_notes(run_dir: Path) -> list[str]:
    """What the per-epoch log says that the final figures do not: divergence."""
    notes = []
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        if not (abs(r["loss"]) < DIVERGED_LOSS):  # also catches nan / inf
            notes.append(f"training diverged: epoch-{r['epoch']} mean loss {r['loss']:.3g}")
            break
    return notes


def trained_its_teacher(run_dir: Path, report: dict, wall_seconds: float) -> bool:
    """True when the run's wall time includes training its (then uncached) teacher: the teacher's
    report was written inside the run's time window."""
    if not report.get("teacher_report"):
        return False
    started = (run_dir / "report.json").stat().st_mtime - wall_seconds
    return Path(report["teacher_report"]).stat().st_mtime >= started


def teacher_row(report_path, cfg, device, progress: bool = False) -> dict:
    """A teacher's row, its figures measured exactly as ``cfg``'s student's (same attacks, images, seeds)."""
    rep = json.loads(Path(report_path).read_text())
    rep.update(checkpoint_figures(cfg, rep["checkpoint"], device, progress))
    return {"role": "teacher", "arch": rep["student"], "method": rep["method"], "epochs_run": rep["epochs_run"],
            **figures_of(rep), "train_seconds": rep["train_seconds"],
            "checkpoint": rep["checkpoint"], "sigma": cfg.method_options.get("sigma") if rep["method"] == "gaussian_aug" else None}


def render_markdown(result: dict) -> str:
    """The table, every attack named from the runs' reports (older results: CE-only PGD, said so)."""
    s, rows = result["settings"], result["rows"]
    tests = [r.get("test", r) for r in rows]  # results from before the honest default keep no "test"
    monitor = " / ".join(dict.fromkeys(r.get("heldout_attack") or f"PGD-{s['monitor_steps']}" for r in rows)) or "-"
    lines = [f"# Method comparison on {s['dataset']}", "",
             f"Produced by `{result['command']}` on {result['machine']['summary']}, "
             f"{result['started']} to {result['finished']}; {_load_words(result)} during the runs; "
             + (f"training times by the {s['clock']} clock." if "clock" in s else "the clock was not recorded."), "",
             f"Student `{s['student']}` for every method, {s['epochs']} epoch(s) "
             f"(Free AT: {s['epochs']} / replays, rounded, at least 1), {s['train_size']} training images "
             f"(+{s['monitor_size']} held out for a per-epoch check under {monitor}), batch {s['batch_size']}, SGD lr {s['lr']} "
             f"momentum {s['momentum']} wd {s['weight_decay']}, schedule {s['schedule']} (cyclic for fast_at, else cosine). "
             f"Threat model {s['norm']} eps = {s['eps']:g}, training attacks {s['attack_steps']} steps of "
             f"{s['attack_step_size']:g}. Teachers: `{s['teacher']}` trained by `{s['teacher_method']}` for "
             f"{s['teacher_epochs']} epochs (shared by every method with a teacher; the crt_chain row has its own "
             f"`gaussian_aug` teacher, sigma = {s['sigma']:g}); students with a teacher start with head init `{s['head_init']}`"
             f"{' (a copy of the teacher classifier)' if s['head_init'] == 'teacher' else ''}. "
             f"Evaluation: clean and robust accuracy under {attack_name(rows)} on the first {s['test_size']} test images"
             + (f" (`--eval-attacks {s['eval_attacks']}`; \"worst of\": a sample counts as robust only if every attack "
                "fails on it)" if "eval_attacks" in s else "")
             + ", model in eval mode, fp32. " + standard_sentence([r.get("standard") for r in rows], s["test_size"])
             + " Each method uses its own defaults (docs/methods.md).", ""]
    if ce_only(tests):
        lines += [CE_ONLY_NOTE.format(what="The robust figures below")
                  + (" This table predates that default." if "eval_attacks" not in s else ""), ""]
    lines += _method_table(result) + _teacher_table(result)
    lines += warning_lines([(r["name"], r.get("test")) for r in rows]
                           + [(f"teacher {t['method']} {t['arch']}", t.get("test")) for t in result["teachers"]])
    lines += ["Columns: *train s* is the sum of the epochs' times (no teacher, no monitoring, no final evaluation); "
              "*img/s* is training images (times replays) per second; *wall s* is the whole run including data "
              "loading, per-epoch monitoring and the final evaluation. On a shared machine wall times are comparable "
              "only roughly and only within this table.",
              "", "Robust accuracy for crt / crt_chain / gaussian_aug is the base classifier's under an L-inf attack; "
              "those methods target certified L2 robustness of the Gaussian-smoothed classifier, which this table "
              "does not measure.", ""]
    return "\n".join(lines)


def _load_words(result: dict) -> str:
    if "load" in result:
        return describe_load(result["load"])
    m = result["machine"]  # older results: the load average at the start and at the end only
    return f"load average {m.get('loadavg_start')} at the start, {m.get('loadavg_end')} at the end"


def _method_table(result: dict) -> list[str]:
    s, rows = result["settings"], result["rows"]
    lines = [f"| method | teacher | clean % | robust % ({attack_name(rows)}) | "
             f"{standard_heading([r.get('standard') for r in rows])} | train s | img/s | wall s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = []
        if r["method_options"]:
            notes.append(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["method_options"].items()))
        if r["head_init"] and r["head_init"] != s["head_init"]:
            notes.append(f"head init {r['head_init']}")
        if r["replays"] > 1:
            notes.append(f"each minibatch replayed {r['replays']}x")
        if r["epochs_run"] != s["epochs"]:
            notes.append(f"{r['epochs_run']} epoch(s) run")
        if r["stopped_early"]:
            notes.append(r["stopped_early"])
        notes += r["notes"]
        if r["wall_includes_teacher"]:
            notes.append("wall s includes training the teacher")
        lines.append(f"| {r['name']} | {r['teacher'] or '-'} | {100 * r['clean_acc']:.2f} | {100 * r['robust_acc']:.2f} | "
                     f"{standard_cell(r.get('standard'))} | {r['train_seconds']:.1f} | {r['images_per_second']:.0f} | "
                     f"{r['wall_seconds']:.1f} | {'; '.join(notes)} |")
    return lines + [""]


def _teacher_table(result: dict) -> list[str]:
    teachers = result["teachers"]
    if not teachers:
        return []
    named = [t for t in teachers if "attack" in t] or result["rows"]  # older results: the rows' attack
    same = "; attacked exactly as the students" if any("attack" in t for t in teachers) else ""
    lines = [f"Teachers (trained once, cached; their time is not in the students' rows{same}):", "", f"| teacher | method | epochs | clean % | robust % ({attack_name(named)}) | "
             f"{standard_heading([t.get('standard') for t in teachers])} | train s |", "|---|---|---:|---:|---:|---:|---:|"]
    for t in teachers:
        m = t["method"] + (f" (sigma={t['sigma']:g})" if t.get("sigma") is not None else "")
        lines.append(f"| {t['arch']} | {m} | {t['epochs_run']} | {100 * t['clean_acc']:.2f} | "
                     f"{100 * t['robust_acc']:.2f} | {standard_cell(t.get('standard'))} | {t['train_seconds']:.1f} |")
    return lines + [""]


def main(argv=None, *, callbacks=()) -> int:
    """The command line; ``callbacks`` go to every run's trainer."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run():
        args = build_parser().parse_args(argv)
        if args.tag is not None and not args.tag.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"--tag {args.tag!r}: use letters, digits, '_' and '-' only (it becomes part of a file name)")
        check_output_dir(args.out, "--out")  # before hours of training, not after
        configs = method_configs(args)
        with harness.torch_threads(args.threads):
            result = compare(args, argv, configs, callbacks)
        stem = f"method_comparison_{'fmnist' if args.dataset == 'fashion_mnist' else args.dataset}"
        if args.tag:
            stem += "_" + args.tag
        harness.write_results(Path(args.out), stem, result, render_markdown(result))
        return 0

    return run_cli(run)


def compare(args, argv, configs, callbacks) -> dict:
    """Every configured run (trained or reused), as table rows with the session's settings and machine."""
    clock = harness.resolve_clock(args.clock, resolve_device(configs[0][1].device))
    rows, teachers, runs = [], {}, []
    for name, cfg in configs:
        run = harness.run_or_reuse(name, cfg, clock=clock, progress=args.progress, callbacks=callbacks)
        runs.append(run)
        report = run["report"]
        rows.append(row_from(name, cfg, report, run["wall_seconds"]))
        if report.get("teacher_report") and report["teacher_report"] not in teachers:
            teachers[report["teacher_report"]] = teacher_row(report["teacher_report"], cfg, report["device"], args.progress)
    base = configs[0][1]
    settings = {k: v for k, v in dataclasses.asdict(base).items()
                if k not in ("method", "teacher", "method_options", "out", "head_init")}
    settings.update(teacher=args.teacher, teacher_method=args.teacher_method, head_init=args.head_init,
                    sigma=args.sigma, attack_step_size=default_step(base.eps, base.attack_steps) if base.alpha is None
                    else base.alpha, quick=args.quick, clock=clock)
    ses = harness.session(runs, rows[0]["device"])
    return {"command": "python -m rrm_fast.bench.compare " + " ".join(shlex.quote(a) for a in argv),
            "started": ses["started"], "finished": ses["finished"], "rendered": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {**ses["machine"], "summary": f"{ses['machine']['summary']}, {rows[0]['precision']}"},
            "load": ses["load"], "settings": settings, "rows": rows, "teachers": list(teachers.values())}


if __name__ == "__main__":
    sys.exit(main())
