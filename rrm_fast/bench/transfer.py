"""The transfer study: RRM variants, one lever per row, every choice made on the held-out TRAIN slice.

    python -m rrm_fast.bench transfer --threads 1                     # the recorded study -> benchmarks/results/transfer_cpu
    python -m rrm_fast.bench transfer --quick                         # a pipeline check (tiny budget, no conclusions)
    python -m rrm_fast.bench transfer --rows default,paper,no_teacher # some rows only

Every row is one run of the one trainer (rrm_fast.train.train_run) of the built-in demo's
student - cnn_wide from the demo's Fast-AT cnn_small teacher, the teacher's head copied in,
--amp, the demo's data (Fashion-MNIST's training split less the 1000-image held-out slice),
--method rrm's defaults, 6 epochs - with ONE thing changed (``ROWS``). Rows that change the
teacher (its method, its epochs, the augmentation it saw) train that teacher once, in the
same session (the harness's teacher cache under --runs-dir).

Figures. Each final model, and each row's teacher, is attacked on the held-out slice of the
TRAIN split (the demo's monitor slice: never trained on, by teacher or student) with the
project's honest worst case, rrm_fast.eval.evaluate_worst_case (a CE and a margin attack per
sample); "ratio" is a row's robust accuracy over its own teacher's, same attacks, same
images. Nothing is chosen on the test split: it is read only for the final rows (the teacher,
the paper's RRM, the defaults), after every choice. The trainer's own end-of-run test figure
is cut to one image and never shown (standard suite off); its per-epoch check is cut to one
step of the monitor's attacks (only the honest figure above counts). Training seconds come from the harness's clock.

Writes OUT/transfer.json, transfer.md and transfer.png (transfer_report.py); each row's run
under --runs-dir, reused when finished with the same settings and clock (harness.py), with its
held-out figures in the run's heldout_eval.json, reused when computed with the same attacks.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import load_dataset
from ..errors import OneLineArgumentParser, run_cli
from ..io import atomic_write_json, check_output_dir
from ..runtime import resolve_device
from ..train import TrainConfig, train_run
from ..train.cli import DEMO_STUDENT, DEMO_TEACHER
from ..train.run import split_train
from ..train.teacher import is_trained, teacher_run_config
from ..validation import whole_number
from . import harness, timing
from .transfer_report import plot, render_markdown


@dataclass(frozen=True)
class Row:
    name: str
    lever: str
    setting: str
    changes: dict = field(default_factory=dict)   # TrainConfig fields
    options: dict = field(default_factory=dict)   # --method rrm options
    final: bool = False                           # evaluated on the test split as well


PAPER = {"student_delta": "none", "feature_loss": "auto"}  # the paper's RRM: clean inputs, cosine (L-inf)
ROWS = (
    Row("default", "baseline", "--method rrm's defaults: per-image student delta + rel_l2 (this project's variant)",
        final=True),
    Row("paper", "baseline", "the paper's RRM: clean inputs, cosine", options=PAPER, final=True),
    Row("paper_2_epochs", "baseline", "the paper's RRM, 2 epochs (the demo before this study)", {"epochs": 2}, PAPER),
    *(Row(f"epochs_{e}", "student epochs", f"{e} epoch{'s' if e > 1 else ''}", {"epochs": e}) for e in (1, 2, 4, 8, 16)),
    Row("xent_0.05", "lambda_x", "lambda_x = 0.05 (default 0.005)", options={"xent_weight": 0.05}),
    Row("xent_0.5", "lambda_x", "lambda_x = 0.5", options={"xent_weight": 0.5}),
    Row("crop_flip", "augmentation", "crop (2-pixel padding) + flip, seen by teacher and student", {"augment": "crop+flip"}),
    Row("noise_uniform", "perturbed inputs", "fresh eta ~ U(eps-ball) each step instead of the kept delta; teacher at "
        "x + eta", options={"student_delta": "uniform"}),
    Row("noise_uniform_clean_target", "perturbed inputs", "fresh eta ~ U(eps-ball); teacher at x",
        options={"student_delta": "uniform", "delta_target": "clean"}),
    Row("noise_gaussian", "perturbed inputs", "fresh eta ~ N(0, eps^2) per pixel; teacher at x + eta",
        options={"student_delta": "gaussian"}),
    Row("delta_clean_target", "perturbed inputs", "per-image delta; teacher at x, not x + delta",
        options={"delta_target": "clean"}),
    Row("delta_step_0.5", "perturbed inputs", "per-image delta moved by 0.5 eps per visit (default 1)",
        options={"delta_step": 0.5}),
    Row("delta_init_zero", "perturbed inputs", "per-image delta started at 0 (default U(-eps, eps))",
        options={"delta_init": "zero"}),
    Row("no_teacher", "ablation", "the same per-image delta WITHOUT the teacher: CE on x + delta alone (free "
        "adversarial training of the student, ATTA-style), random head", {"head_init": "random"},
        {"feat_weight": 0.0, "xent_weight": 1.0}),
    Row("teacher_pgd_at", "teacher strength", "PGD-AT teacher (cnn_small, 4 epochs) instead of Fast AT",
        {"teacher_method": "pgd_at"}),
    Row("teacher_8_epochs", "teacher strength", "Fast-AT teacher trained 8 epochs (default 4)", {"teacher_epochs": 8}),
    Row("resnet_small", "student architecture", "resnet_small student (residual, BatchNorm) instead of cnn_wide",
        {"student": "resnet_small"}),
    Row("phi_256", "phi width / projection", "cnn_wide256 student: 256-d phi through a learned projection to the "
        "teacher's 128", {"student": "cnn_wide256"}),
    Row("cosine", "phi / logit scale", "per-image delta with cosine (direction only) instead of rel_l2",
        options={"feature_loss": "cosine"}),
    Row("cosine_norm", "phi / logit scale", "cosine + norm term (||phi_S|| / ||phi_T|| - 1)^2, weight 1",
        options={"feature_loss": "cosine", "norm_weight": 1.0}),
    Row("paper_rel_l2", "phi / logit scale", "clean inputs (the paper's) with rel_l2", options={"student_delta": "none"}),
    Row("head_random", "head init", "random head instead of the teacher's", {"head_init": "random"}),
    Row("lr_0.1", "lr and schedule", "lr 0.1 (default 0.05)", {"lr": 0.1}),
    Row("schedule_cyclic", "lr and schedule", "cyclic schedule (default cosine)", {"schedule": "cyclic"}),
)
ROW_NAMES = tuple(r.name for r in ROWS)
# Settings the trainer hands on to an architecture-named teacher (it is trained with the run's
# lr, schedule, ...) that are the STUDENT's lever here: a row changing one keeps the base row's teacher.
STUDENT_ONLY = frozenset({"lr", "schedule", "batch_size", "momentum", "weight_decay"})

# FULL: the recorded study, at the demo's data (the defaults it supports are the demo's); QUICK:
# a pipeline check whose figures support nothing. eval_steps None = the attack set's own.
FULL = dict(train_size=None, monitor_size=1000, test_size=10000, epochs=6, teacher_epochs=4, eval_steps=None)
QUICK = dict(train_size=256, monitor_size=64, test_size=64, epochs=1, teacher_epochs=1, eval_steps=5)


def build_parser():
    p = OneLineArgumentParser(prog="python -m rrm_fast.bench transfer", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="directory for transfer.json/.md/.png (default benchmarks/results/"
                                                 "transfer_<device>; runs/transfer-quick/results with --quick)")
    p.add_argument("--runs-dir", default=None, help="where each row's run goes (default runs/transfer[-quick])")
    p.add_argument("--cache", default=None, help="teacher cache (default RUNS_DIR/cache: teachers trained in this study)")
    p.add_argument("--quick", action="store_true", help=f"tiny budget {QUICK} instead of {FULL}")
    p.add_argument("--rows", default="all", help=f"comma-separated rows, or 'all' ({', '.join(ROW_NAMES)})")
    for key in ("train_size", "monitor_size", "test_size", "epochs", "teacher_epochs", "eval_steps"):
        p.add_argument("--" + key.replace("_", "-"), type=whole_number, default=None,
                       help=f"default {FULL[key]} ({QUICK[key]} with --quick)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=whole_number, default=0)
    harness.add_run_arguments(p, clock_default="auto")
    return p


def select_rows(spec: str) -> list[Row]:
    names = list(ROW_NAMES) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROW_NAMES]
    if unknown or not names:
        raise ValueError(f"--rows: unknown {unknown or 'empty list'}; choose from {', '.join(ROW_NAMES)} or 'all'")
    return [r for r in ROWS if r.name in names]


def row_config(row: Row, size: dict, args) -> TrainConfig:
    """The demo's student run with the row's one change, at the study's budget."""
    epochs = row.changes.get("epochs", size["epochs"])
    if args.quick and "epochs" in row.changes:  # keep the lever's shape at the tiny budget: 1, 1, 1, 1, 3
        epochs = max(1, round(epochs * size["epochs"] / FULL["epochs"]))
    values = {**DEMO_STUDENT, "teacher": DEMO_TEACHER["student"], "teacher_method": DEMO_TEACHER["method"],
              "teacher_epochs": size["teacher_epochs"], "amp": True, "train_size": size["train_size"],
              "monitor_size": size["monitor_size"], "monitor_steps": 1, "test_size": 1, "eval_steps": 1, "standard_size": 0,
              "device": args.device, "seed": args.seed, "method_options": dict(row.options),
              **{k: v for k, v in row.changes.items() if k != "epochs"}, "epochs": epochs}
    if "teacher_epochs" in row.changes and args.quick:
        values["teacher_epochs"] = size["teacher_epochs"] + 1
    pinned = pinned_teacher(row, size, args)
    if pinned is not None:  # the base row's teacher by its checkpoint, so the row's change stays the student's
        values["teacher"] = str(Path(pinned.out) / "final.safetensors")
    return TrainConfig(**values, out=str(Path(args.runs_dir) / row.name))


def pinned_teacher(row: Row, size: dict, args) -> TrainConfig | None:
    """The base row's teacher run for a row whose change is the student's own (STUDENT_ONLY), else None."""
    if not STUDENT_ONLY & set(row.changes):
        return None
    return teacher_run_config(row_config(ROWS[0], size, args))


# --------------------------------------------------------------------------- figures
def logit_scale(model, ds, device, batch: int = 500) -> dict:
    """Mean p(max) and mean max logit on ``ds`` (how soft the model's logits are)."""
    model.eval()
    p_max = z_max = 0.0
    with torch.no_grad():
        for i in range(0, len(ds), batch):
            x = ds.images[i:i + batch].to(device).float().div_(255)
            z = model(x).float()
            p_max += float(z.softmax(1).amax(1).sum())
            z_max += float(z.amax(1).sum())
    return {"p_max": p_max / len(ds), "max_logit": z_max / len(ds)}


def figures(checkpoint: str, ds, where: Path, spec: dict, evaluate, device) -> dict:
    """The honest figures of ``checkpoint`` on ``ds``, kept in ``where`` and reused while ``spec`` holds."""
    if where.exists():
        old = json.loads(where.read_text())
        if old.get("spec") == spec:
            return old
    model, _ = load_model(checkpoint, device)
    kw = {} if spec["steps"] is None else {"steps": spec["steps"]}
    res = evaluate(model, ds, eps=spec["eps"], norm=spec["norm"], restarts=1, batch_size=500, device=device,
                   seed=0, progress=False, channels_last=True, **kw)
    out = {"spec": spec, "n": res["n"], "clean": res["clean_acc"], "robust": res["robust_acc"],
           "attack": res["attack"], "warnings": res.get("warnings", []), "seconds": res.get("seconds"),
           **logit_scale(model, ds, device)}
    atomic_write_json(where, out)
    return out


def default_evaluate():
    from ..eval import evaluate_worst_case  # the project's honest worst case (CE + margin attacks)
    return evaluate_worst_case


# --------------------------------------------------------------------------- the study
def run_rows(args, rows: list[Row], size: dict, clock: str, evaluate, callbacks=()) -> tuple[list, dict, list]:
    """Train (or reuse) each row, then its held-out figures and its teacher's; the test split last."""
    device = resolve_device(args.device)
    full = load_dataset("fashion_mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    test = test.subset(torch.arange(min(size["test_size"], len(test))))
    results, teachers, runs = [], {}, []
    for row in rows:
        cfg = row_config(row, size, args)
        pinned = pinned_teacher(row, size, args)
        if pinned is not None and not is_trained(pinned):  # as the trainer trains a cached teacher (its own run)
            train_run(pinned, progress=args.progress, exist_ok=True, resume=True, clock=timing.clock(clock))
        run = harness.run_or_reuse(row.name, cfg, clock=clock, progress=args.progress, callbacks=callbacks)
        runs.append(run)
        heldout = split_train(cfg, full)[1]
        spec = {"set": "heldout", "eps": cfg.eps, "norm": cfg.norm, "steps": size["eval_steps"], "n": len(heldout),
                "seed": cfg.seed, "train_size": cfg.train_size}
        rep = run["report"]
        t_report = rep["teacher_report"] or str(Path(pinned.out) / "report.json")
        t_ckpt = str(Path(t_report).parent / "final.safetensors")
        if t_ckpt not in teachers:
            teachers[t_ckpt] = teacher_entry(t_report, heldout, spec, evaluate, device)
        res = row_result(row, cfg, run, figures(rep["checkpoint"], heldout, Path(cfg.out) / "heldout_eval.json", spec,
                                                evaluate, device), teachers[t_ckpt])
        results.append(res)
    for res in (r for r in results if r["final"]):  # the test split, read after every choice is made
        spec = {"set": "test", "eps": res["eps"], "norm": res["norm"], "steps": size["eval_steps"], "n": len(test),
                "seed": 0}
        res["test"] = figures(res["checkpoint"], test, Path(res["run_dir"]) / "test_eval.json", spec, evaluate, device)
        t = teachers[res["teacher"]["checkpoint"]]
        if "test" not in t:
            t["test"] = figures(t["checkpoint"], test, Path(t["checkpoint"]).parent / "test_eval.json", spec, evaluate,
                                device)
    return results, teachers, runs


def teacher_entry(report_path: str, heldout, spec: dict, evaluate, device) -> dict:
    rep = json.loads(Path(report_path).read_text())
    ckpt = str(Path(report_path).parent / "final.safetensors")
    cfg = json.loads((Path(report_path).parent / "config.json").read_text())
    return {"checkpoint": ckpt, "arch": rep["student"], "method": rep["method"], "epochs_run": rep["epochs_run"],
            "augment": cfg.get("augment", "auto"), "train_seconds": rep["train_seconds"],
            "heldout": figures(ckpt, heldout, Path(report_path).parent / "heldout_eval.json", spec, evaluate, device)}


def row_result(row: Row, cfg: TrainConfig, run: dict, heldout: dict, teacher: dict) -> dict:
    rep = run["report"]
    t_robust = teacher["heldout"]["robust"]
    return {"name": row.name, "lever": row.lever, "setting": row.setting, "final": row.final, "changes": row.changes,
            "options": row.options, "student": cfg.student, "eps": cfg.eps, "norm": cfg.norm, "epochs_run": rep["epochs_run"],
            "train_seconds": rep["train_seconds"], "wall_seconds": run["wall_seconds"], "run_load": run["load"],
            "reused": run["reused"], "precision": rep["precision"], "heldout": heldout,
            "ratio": heldout["robust"] / t_robust if t_robust > 0 else None, "checkpoint": rep["checkpoint"],
            "run_dir": cfg.out, "teacher": {k: teacher[k] for k in ("checkpoint", "arch", "method", "epochs_run")}}


def run_transfer(args, argv, *, evaluate=None, callbacks=()) -> dict:
    """The study: rows, figures, then transfer.json/.md/.png. ``evaluate``: the robust-accuracy
    function (default rrm_fast.eval.evaluate_worst_case); ``callbacks`` go to every run's trainer."""
    rows = select_rows(args.rows)
    size = harness.budget(args, FULL, QUICK)
    args.runs_dir = args.runs_dir or ("runs/transfer-quick" if args.quick else "runs/transfer")
    device_kind = resolve_device(args.device).type
    out = Path(args.out or ("runs/transfer-quick/results" if args.quick else f"benchmarks/results/transfer_{device_kind}"))
    check_output_dir(out, "--out")  # before hours of training, not after
    os.environ["RRM_FAST_CACHE"] = str(Path(args.cache or Path(args.runs_dir) / "cache").resolve())
    with harness.torch_threads(args.threads):
        clock = harness.resolve_clock(args.clock, device_kind)
        results, teachers, runs = run_rows(args, rows, size, clock, evaluate or default_evaluate(), callbacks)
    ses = harness.session(runs, device_kind)
    base = dataclasses.asdict(row_config(ROWS[0], size, args))
    res = {"command": "python -m rrm_fast.bench transfer " + " ".join(shlex.quote(a) for a in argv),
           "started": ses["started"], "finished": ses["finished"], "wall_seconds": ses["wall_seconds"],
           "rendered": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "machine": ses["machine"],
           "load": ses["load"], "clock": clock, "budget": size,
           "base": {k: base[k] for k in ("method", "student", "teacher", "teacher_method", "teacher_epochs", "head_init",
                                          "epochs", "lr", "batch_size", "schedule", "eps", "norm", "amp", "train_size",
                                          "monitor_size", "seed")},
           "rows": results, "teachers": list(teachers.values()), "plot": "transfer.png"}
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "transfer.png")
    harness.write_results(out, "transfer", res, render_markdown(res), plots=[out / "transfer.png"])
    return res


def main(argv=None, *, evaluate=None, callbacks=()) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run():
        run_transfer(build_parser().parse_args(argv), argv, evaluate=evaluate, callbacks=callbacks)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
