"""The command line, and the built-in demo.

    python -m rrm_fast.train --amp            # the built-in demo (see DEMO_* below)
    python -m rrm_fast.train --method pgd_at --student cnn_small --epochs 3
    python -m rrm_fast.train --method rrm --teacher runs/t/final.safetensors --student cnn_wide
    python -m rrm_fast.train --config run.yaml --lr 0.1     # the file's settings; flags override it
    python -m rrm_fast.train --resume runs/RUN            # continue a killed or interrupted run
    torchrun --nproc_per_node=4 -m rrm_fast.train ...     # data parallel; --batch-size is the global batch

Every flag is a TrainConfig field (config.py) or a method's option. Each run writes a
directory: config.json (resolved), metrics.jsonl (one line per epoch: losses, clean and
robust accuracy on a held-out slice of the TRAIN split, epoch time, images/s) and TensorBoard
events beside it, checkpoints (safetensors + JSON), and report.json with the final test
figures. state/ holds the last two training-state checkpoints (every --checkpoint-every
steps and at each epoch end) from which --resume continues bit for bit; see
docs/reliability.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import distributed as dist_util
from ..errors import UsageError, console_logging, did_you_mean, run_cli
from ..io import atomic_write_json
from .config import (TrainConfig, add_config_flags, config_for_resume, config_from_values, merge, parse_error_line,
                     read_config_file, resume_flags, validate_config, values_from_flags)
from .check import checkpoint_figures
from .run import train_run
from .state import check_out

log = logging.getLogger("rrm_fast.train")

# The built-in demo: a Fast-AT teacher (cnn_small) and an RRM student of another
# architecture (cnn_wide: twice the conv widths, the same 128-d phi), with the teacher's head
# copied into the student. The student is --method rrm's defaults: this project's variant
# (per-image student delta + rel_l2; the paper's RRM is --student-delta none --feature-loss
# auto), 6 epochs - chosen on the held-out TRAIN slice by the transfer study (docs/transfer.md:
# honest robust accuracy 0.93 / 0.98 / 1.0 of the teacher's at 4 / 6 / 8 epochs) to fit the
# 15-minute budget on 2 CPU cores with the teacher and the evaluations; see README "Demo defaults".
# The final figures: the honest pair (--eval-attacks' default, APGD-CE-50 + APGD-T-50x3) on the
# first 1000 test images, and the standard suite on the first 200 of them with Square cut to 1000
# queries (docs/evaluation.md: Square-5000 fooled no sample APGD had missed, on three models), to
# fit the 15-minute budget on 2 CPU cores. `python -m rrm_fast.eval CKPT --suite worst-case`
# attacks the full split.
DEMO_TEST_SIZE, DEMO_STANDARD_SIZE, DEMO_STANDARD_QUERIES = 1000, 200, 1000
# The natural baseline (the student's architecture without the teacher) trains at most 2 epochs:
# measured, 6 epochs took the demo to 14 min 25 s of the 15-minute budget (2 epochs: 12 min 56 s),
# and more epochs make a natural model less robust, not more (held-out worst case 10.4 / 4.4 /
# 1.9 % after epochs 1 / 2 / 6 of the 6-epoch run; test 0.7 % at 6 epochs, 6.0 % at 2).
DEMO_NATURAL_EPOCHS = 2
DEMO_TEACHER = dict(method="fast_at", student="cnn_small", epochs=4)
DEMO_STUDENT = dict(method="rrm", student="cnn_wide", epochs=6, lr=0.05, head_init="teacher", test_size=DEMO_TEST_SIZE,
                    standard_size=DEMO_STANDARD_SIZE, standard_queries=DEMO_STANDARD_QUERIES)


def build_parser():
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="python -m rrm_fast.train", exit_on_error=False, default_env=False,
                       description="Train robust models: RRM, its peers, and adversarial-training baselines. "
                                   "With no --method and no --config it runs the built-in demo (teacher, RRM student, "
                                   "natural baseline).")
    p.add_argument("--config", help="YAML or JSON file with the same keys as the flags (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest training state, with "
                                                       f"its saved settings (only {', '.join(resume_flags())} may be added)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(p)
    return p


@dataclass
class Request:
    """What the command line asks for."""
    cfg: TrainConfig
    progress: bool
    resume: bool = False
    demo: bool = False


def parse(argv) -> Request:
    from jsonargparse import ArgumentError

    parser = build_parser()
    try:
        given = parser.parse_args(argv, defaults=False).as_dict()  # only what was typed
    except ArgumentError as err:
        line = parse_error_line(err)
        if line.startswith("unrecognized arguments:"):
            flags = [w for w in line.split(":", 1)[1].split() if w.startswith("-")]
            line += did_you_mean(flags[0], parser._option_string_actions) if flags else ""
        raise UsageError(f"{line}; see {parser.prog} --help") from None
    config_file, resume_dir = given.pop("config", None), given.pop("resume", None)
    progress = not given.pop("no_progress", False)
    if resume_dir:
        if config_file:
            raise ValueError(f"--resume {resume_dir} continues that run with its own config.json; drop --config "
                             f"{config_file}, or start a new run from it with another --out")
        return Request(config_for_resume(resume_dir, given), progress, resume=True)
    flags = values_from_flags(given)
    if config_file:
        return Request(config_from_values(merge(read_config_file(config_file, parser), flags)), progress)
    if "method" in flags:
        return Request(config_from_values(flags), progress)
    demo = {**DEMO_STUDENT, "teacher": DEMO_TEACHER["student"], "teacher_method": DEMO_TEACHER["method"],
            "teacher_epochs": DEMO_TEACHER["epochs"]}
    cfg = config_from_values(merge(demo, flags))
    base_out = Path(cfg.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (base_out / "demo.json").exists():
        raise ValueError(f"--out {base_out} already holds demo.json from an earlier demo, which this one would replace; "
                         "choose another --out")
    cfg.out = str(base_out / "student")
    check_out(base_out / "natural", resume=False, exist_ok=False)  # before the student's minutes, not after
    return Request(cfg, progress, demo=True)


def natural_config(cfg: TrainConfig) -> TrainConfig:
    """The demo's baseline: the student's architecture, data, schedule and attacks, trained
    naturally, without the teacher, for at most DEMO_NATURAL_EPOCHS; what the student has beyond
    it is what the transfer gave."""
    out = dataclasses.replace(cfg, method="natural", teacher=None, teacher_arch=None, head_init="random",
                              method_options={}, epochs=min(cfg.epochs, DEMO_NATURAL_EPOCHS),
                              out=str(Path(cfg.out).parent / "natural"))
    validate_config(out)
    return out


def run_demo(cfg: TrainConfig, progress: bool) -> int:
    """Teacher (fast_at cnn_small, cached) -> RRM student (cnn_wide) -> natural cnn_wide -> table.
    All three are attacked the same way (same attacks, samples and seeds), so the ratios are fair."""
    base_out = Path(cfg.out).parent
    t0 = time.perf_counter()
    s_report = train_run(cfg, progress=progress)
    t_report = json.loads(Path(s_report["teacher_report"]).read_text())
    t_report.update(checkpoint_figures(cfg, t_report["checkpoint"], s_report["device"], progress and sys.stderr.isatty()))
    n_report = train_run(natural_config(cfg), progress=progress)
    summary = demo_summary(t_report, s_report, n_report)
    log.info("\n".join(demo_table(cfg, t_report, s_report, summary, n_report) + [
        f"teacher checkpoint: {t_report['checkpoint']}", f"student checkpoint: {s_report['checkpoint']}",
        f"natural checkpoint: {n_report['checkpoint']}", f"total wall time {time.perf_counter() - t0:.1f}s"]))
    atomic_write_json(base_out / "demo.json", {"teacher": t_report, "student": s_report, "natural": n_report,
                                               "summary": summary})
    return 0


def demo_summary(t_report: dict, s_report: dict, n_report: dict | None = None) -> dict:
    """What the student keeps of its teacher, under the same attacks on the same images, and
    (``n_report``) how far it is above natural training of its own architecture."""
    t, s = t_report["test"], s_report["test"]
    out = {"attack": s["attack"], "n": s["n"], "robust_kept": s["robust_acc"] / max(t["robust_acc"], 1e-12),
           "clean_gap_points": 100 * (t["clean_acc"] - s["clean_acc"])}
    if t_report.get("test_standard") and s_report.get("test_standard"):
        out["robust_kept_standard"] = (s_report["test_standard"]["robust_acc"]
                                       / max(t_report["test_standard"]["robust_acc"], 1e-12))
    if n_report is not None:
        out["natural_robust"], out["natural_epochs"] = n_report["test"]["robust_acc"], n_report["epochs_run"]
        out["robust_over_natural_points"] = 100 * (s["robust_acc"] - n_report["test"]["robust_acc"])
    return out


def demo_table(cfg: TrainConfig, t_report: dict, s_report: dict, summary: dict, n_report: dict | None = None) -> list[str]:
    s = s_report["test"]
    standard = s_report.get("test_standard")
    where = f"the first {s['n']} test images" if cfg.test_size else f"the full test split ({s['n']} images)"
    lines = ["", f"Demo on {cfg.dataset} ({cfg.norm}, eps={cfg.eps:g}), {where}; robust = per-sample {s['attack']}"
                 + (f"; standard = {standard['attack']} on the first {standard['n']}" if standard else ""),
             f"{'role':8} {'model':10} {'method':8} {'clean':>7} {'robust':>7}" + (f" {'standard':>8}" if standard else "")
             + f" {'train s':>8} {'img/s':>7}"]
    roles = [("teacher", t_report), ("student", s_report)] + ([("natural", n_report)] if n_report else [])
    for role, r in roles:
        std = f" {100 * r['test_standard']['robust_acc']:7.2f}%" if standard and r.get("test_standard") else ""
        lines.append(f"{role:8} {r['student']:10} {r['method']:8} {100 * r['test']['clean_acc']:6.2f}% "
                     f"{100 * r['test']['robust_acc']:6.2f}%{std} {r['train_seconds']:8.1f} {r['images_per_second']:7.0f}")
    gap = summary["clean_gap_points"]
    lines.append(f"the student keeps {100 * summary['robust_kept']:.1f}% of the teacher's robust accuracy (same attacks, "
                 f"same images); its clean accuracy is {abs(gap):.2f} points {'below' if gap >= 0 else 'above'} the teacher's")
    if n_report:
        lines.append(f"natural training of the student's architecture ({summary['natural_epochs']} epochs, no teacher) reaches "
                     f"{100 * summary['natural_robust']:.2f}%: the transfer adds {summary['robust_over_natural_points']:.2f} points")
    for role, r in roles:
        lines += [f"[WARN] {role}: {w}" for w in r["test"].get("warnings", [])]
    return lines


def main(argv=None) -> int:
    console_logging(info=True)  # progress on stdout; warnings and errors alone go to stderr

    def run():
        request = parse(sys.argv[1:] if argv is None else list(argv))
        if request.demo:
            return run_demo(request.cfg, request.progress)
        train_run(request.cfg, progress=request.progress, resume=request.resume)
        return 0

    try:
        return run_cli(run)  # also turns TrainingInterrupted into its message and exit code
    finally:
        dist_util.shutdown()
