"""Every training method on one task: same teacher, same student architecture, same epochs.

    python -m rrm_fast.bench.compare --threads 1 --out benchmarks/results   # the recorded comparison
    python -m rrm_fast.bench.compare --quick --out /tmp/cmp               # a smoke run in a few minutes

Each method is one ``train_run`` with the settings below (methods with a teacher share the one
cached, architecture-named teacher); the table reports clean and PGD-k accuracy on the same
test images, the training time (epochs only: no teacher, no monitoring, no final evaluation)
and the whole run's wall time. The CRT chain (a Gaussian-augmentation teacher, then a CRT
student with the same sigma) is an extra row: CRT's goal is certified L2 robustness of the
smoothed model, so its PGD figure is only the base classifier's.

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
from ..io import atomic_write_json, atomic_write_text, check_output_dir
from ..methods import METHODS
from ..runtime import resolve_device
from ..train import TrainConfig
from ..train.config import check_teacher_method
from ..validation import whole_number
from . import harness
from .machine import describe_load

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
# shared 2-core CPU: two epochs of 6000 images, PGD-20 on the first 1000 test images
FULL = dict(train_size=6000, test_size=1000, monitor_size=200, epochs=2, teacher_epochs=3, eval_steps=20)
QUICK = dict(train_size=1000, test_size=200, monitor_size=100, epochs=1, teacher_epochs=1, eval_steps=5)


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
    for key in ("train_size", "test_size", "monitor_size", "epochs", "teacher_epochs", "eval_steps"):
        p.add_argument("--" + key.replace("_", "-"), type=whole_number, default=None, help=f"default {FULL[key]} ({QUICK[key]} with --quick)")
    p.add_argument("--attack-steps", type=whole_number, default=7, help="training PGD steps (pgd_at, trades, rslad, ard)")
    p.add_argument("--batch-size", type=whole_number, default=128)
    p.add_argument("--monitor-steps", type=whole_number, default=10, help="PGD steps of the per-epoch held-out check")
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
                  batch_size=args.batch_size, monitor_steps=args.monitor_steps, seed=args.seed,
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
        out.append((name, cfg))
    return out


def row_from(name, cfg, report, wall_seconds) -> dict:
    test = report["test"]
    replays = harness.replays_of(cfg)
    return {"name": name, "method": cfg.method, "paper": METHODS[cfg.method].paper,
            "teacher": f"{cfg.teacher_method} {cfg.teacher}" if cfg.teacher else None,
            "head_init": cfg.head_init if cfg.teacher else None, "replays": replays,
            "method_options": cfg.method_options, "clean_acc": test["clean_acc"], "robust_acc": test["robust_acc"],
            "attack": f"{test['attack']} x{test['restarts']} ({test['norm']} eps={test['eps']:g})",
            "epochs_run": report["epochs_run"], "train_seconds": report["train_seconds"],
            "images_per_second": report["images_per_second"], "wall_seconds": wall_seconds,
            "stopped_early": report["stopped_early"], "device": report["device"], "precision": report["precision"],
            "notes": training_notes(Path(cfg.out)), "wall_includes_teacher": trained_its_teacher(Path(cfg.out), report, wall_seconds),
            "run_dir": str(Path(cfg.out))}


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


def teacher_row(report_path, cfg) -> dict:
    rep = json.loads(Path(report_path).read_text())
    test = rep["test"]
    return {"role": "teacher", "arch": rep["student"], "method": rep["method"], "epochs_run": rep["epochs_run"],
            "clean_acc": test["clean_acc"], "robust_acc": test["robust_acc"], "train_seconds": rep["train_seconds"],
            "checkpoint": rep["checkpoint"], "sigma": cfg.method_options.get("sigma") if rep["method"] == "gaussian_aug" else None}


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# Method comparison on {s['dataset']}", "",
             f"Produced by `{result['command']}` on {result['machine']['summary']}, "
             f"{result['started']} to {result['finished']}; {describe_load(result['load'])} during the runs; "
             f"training times by the {s['clock']} clock.", "",
             f"Student `{s['student']}` for every method, {s['epochs']} epoch(s) "
             f"(Free AT: {s['epochs']} / replays, rounded, at least 1), {s['train_size']} training images "
             f"(+{s['monitor_size']} held out for a per-epoch PGD-{s['monitor_steps']} check), batch {s['batch_size']}, SGD lr {s['lr']} "
             f"momentum {s['momentum']} wd {s['weight_decay']}, schedule {s['schedule']} (cyclic for fast_at, else cosine). "
             f"Threat model {s['norm']} eps = {s['eps']:g}, training attacks {s['attack_steps']} steps of "
             f"{s['attack_step_size']:g}. Teachers: `{s['teacher']}` trained by `{s['teacher_method']}` for "
             f"{s['teacher_epochs']} epochs (shared by every method with a teacher; the crt_chain row has its own "
             f"`gaussian_aug` teacher, sigma = {s['sigma']:g}); students with a teacher start with head init `{s['head_init']}`"
             f"{' (a copy of the teacher classifier)' if s['head_init'] == 'teacher' else ''}. "
             f"Evaluation: clean and {result['rows'][0]['attack'] if result['rows'] else 'PGD'} accuracy on the first "
             f"{s['test_size']} test images, model in eval mode, fp32. Each method uses its own defaults (docs/methods.md).",
             "", "| method | teacher | clean % | PGD % | train s | img/s | wall s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
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
                     f"{r['train_seconds']:.1f} | {r['images_per_second']:.0f} | {r['wall_seconds']:.1f} | {'; '.join(notes)} |")
    if result["teachers"]:
        lines += ["", "Teachers (trained once, cached; their time is not in the students' rows):", "",
                  "| teacher | method | epochs | clean % | PGD % | train s |", "|---|---|---:|---:|---:|---:|"]
        for t in result["teachers"]:
            m = t["method"] + (f" (sigma={t['sigma']:g})" if t.get("sigma") is not None else "")
            lines.append(f"| {t['arch']} | {m} | {t['epochs_run']} | {100 * t['clean_acc']:.2f} | "
                         f"{100 * t['robust_acc']:.2f} | {t['train_seconds']:.1f} |")
    lines += ["", "Columns: *train s* is the sum of the epochs' times (no teacher, no monitoring, no final evaluation); "
              "*img/s* is training images (times replays) per second; *wall s* is the whole run including data "
              "loading, per-epoch monitoring and the final evaluation. On a shared machine wall times are comparable "
              "only roughly and only within this table.",
              "", "PGD accuracy for crt / crt_chain / gaussian_aug is the base classifier's under an L-inf attack; "
              "those methods target certified L2 robustness of the Gaussian-smoothed classifier, which this table "
              "does not measure.", ""]
    return "\n".join(lines)


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
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / f"{stem}.json", result)
        atomic_write_text(out / f"{stem}.md", render_markdown(result))
        print(render_markdown(result))
        print(f"-> {out / (stem + '.json')}, {out / (stem + '.md')}")
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
            teachers[report["teacher_report"]] = teacher_row(report["teacher_report"], cfg)
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
