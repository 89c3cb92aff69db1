"""The trainer: one loop for every method.

    python -m rrm_fast.train --amp            # the built-in demo (see DEMO below)
    python -m rrm_fast.train --method pgd_at --student cnn_small --epochs 3
    python -m rrm_fast.train --method rrm --teacher runs/t/final.safetensors --student cnn_wide

Each run writes a directory: config.json (resolved), metrics.jsonl (one line per epoch:
losses, clean and robust accuracy on a held-out slice of the TRAIN split, epoch time,
images/s), checkpoints (safetensors + JSON), and report.json with the final test figures.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import atomic_write_json, load_model, save_model
from .data import DATASETS, load_dataset, make_loader, split_holdout
from .errors import run_cli
from .eval import evaluate_robustness
from .methods import METHODS, ThreatModel
from .models import ARCHS, attach_projection, copy_head, create_model
from .runtime import resolve_device, resolve_precision, seed_everything

log = logging.getLogger("rrm_fast")


@dataclass
class TrainConfig:
    method: str = "natural"
    student: str = "cnn_small"
    teacher: str | None = None          # a checkpoint path, or an architecture to train a teacher for
    teacher_method: str = "fast_at"     # how an architecture-named teacher is trained
    teacher_epochs: int = 4
    head_init: str = "random"           # "teacher": start the student's classifier as a copy of the teacher's
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "auto"              # cosine | cyclic | constant | auto (cyclic for fast_at, else cosine)
    eps: float = 0.1
    norm: str = "Linf"
    alpha: float | None = None          # training PGD step (None: 2.5*eps/steps)
    attack_steps: int = 7               # training PGD steps (pgd_at, trades, ...)
    eval_steps: int = 20                # final PGD-k on the test split
    eval_restarts: int = 1
    monitor_size: int = 1000            # held-out TRAIN samples for per-epoch monitoring
    monitor_steps: int = 10
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    loader: str = "auto"
    method_options: dict = field(default_factory=dict)


# The built-in demo: a Fast-AT teacher (cnn_small) and an RRM student of another
# architecture (cnn_wide, phi width 256 vs 128, so the projection is used), with the
# teacher's head copied into the student. Chosen on the held-out train slice to fit a
# 15-minute budget on 2 CPU cores; see README "Demo defaults".
DEMO_TEACHER = dict(method="fast_at", student="cnn_small", epochs=4)
DEMO_STUDENT = dict(method="rrm", student="cnn_wide", epochs=2, lr=0.05, head_init="teacher")


def config_hash(cfg: TrainConfig, keys) -> str:
    d = {k: getattr(cfg, k) for k in keys}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


TEACHER_KEYS = ("method", "student", "dataset", "data_dir", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                "schedule", "eps", "norm", "alpha", "attack_steps", "seed", "train_size", "monitor_size",
                "method_options", "amp", "channels_last")


def cache_dir() -> Path:
    return Path(os.environ.get("RRM_FAST_CACHE", Path.home() / ".cache" / "rrm_fast"))


# --------------------------------------------------------------------------- run pieces
def make_schedule(cfg: TrainConfig, optimizer, total_steps: int):
    kind = cfg.schedule if cfg.schedule != "auto" else ("cyclic" if cfg.method == "fast_at" else "cosine")
    if kind == "constant":
        fn = lambda s: 1.0  # noqa: E731
    elif kind == "cosine":
        fn = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))  # noqa: E731
    elif kind == "cyclic":  # Wong et al.: linear up to the peak at 2/5 of training, then linear down to 0
        peak = max(1, int(0.4 * total_steps))
        fn = lambda s: s / peak if s < peak else max(0.0, (total_steps - s) / max(1, total_steps - peak))  # noqa: E731
    else:
        raise ValueError(f"unknown --schedule {cfg.schedule!r}; choose cosine, cyclic, constant or auto")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def load_or_build_teacher(cfg: TrainConfig, ds_train, device, progress=True):
    """A frozen teacher: loaded from a checkpoint, or trained (fast_at by default) and cached
    under $RRM_FAST_CACHE keyed by its config so later runs reuse it."""
    spec = cfg.teacher
    if spec is None:
        return None, None
    cached_report = None
    if spec in ARCHS:
        # options both methods declare reach the teacher too (crt + gaussian_aug share --sigma)
        t_opts = METHODS[cfg.teacher_method].options if cfg.teacher_method in METHODS else {}
        tcfg = dataclasses.replace(cfg, method=cfg.teacher_method, student=spec, epochs=cfg.teacher_epochs,
                                   teacher=None, head_init="random", out=None,
                                   method_options={k: v for k, v in cfg.method_options.items() if k in t_opts})
        key = config_hash(tcfg, TEACHER_KEYS)
        ckpt = cache_dir() / "teachers" / key / "final.safetensors"
        if ckpt.exists():
            print(f"teacher: reusing cached {cfg.teacher_method} {spec} from {ckpt}")
        else:
            tcfg.out = str(ckpt.parent)
            print(f"teacher: training {cfg.teacher_method} {spec} (cached at {ckpt.parent})")
            train_run(tcfg, progress=progress, exist_ok=True)
        spec = str(ckpt)
        cached_report = str(ckpt.parent / "report.json")
    teacher, meta = load_model(spec, device)
    meta["report_path"] = cached_report
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher.num_classes != ds_train.num_classes:
        raise ValueError(f"teacher {spec} predicts {teacher.num_classes} classes but {cfg.dataset} has {ds_train.num_classes}; "
                         "use a teacher trained on the same label set")
    return teacher.eval(), meta


def check_out_dir(out: Path, cfg: TrainConfig, exist_ok: bool) -> None:
    cfg_path = out / "config.json"
    if cfg_path.exists() and not exist_ok:
        raise ValueError(f"output directory {out} already holds a run (config.json); choose another --out or delete it")


def train_run(cfg: TrainConfig, progress: bool = True, exist_ok: bool = False) -> dict:
    """Train one model with one method; returns the report (also written to OUT/report.json)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    if cfg.student not in ARCHS:
        raise ValueError(f"unknown --student {cfg.student!r}; choose one of: {', '.join(ARCHS)}")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if cfg.eps < 0:
        raise ValueError(f"--eps must be >= 0 (got {cfg.eps}); epsilon is in pixel units")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.attack_steps < 1 or cfg.eval_steps < 1:
        raise ValueError("--epochs, --batch-size, --attack-steps and --eval-steps must be >= 1")
    device = resolve_device(cfg.device)
    out = Path(cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}-{cfg.student}")
    check_out_dir(out, cfg, exist_ok)
    seed_everything(cfg.seed)

    # ---- data: train split minus a held-out monitoring slice; the test split only at the end
    full_train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    if cfg.train_size:
        full_train = full_train.subset(torch.arange(min(cfg.train_size + cfg.monitor_size, len(full_train))))
    train_ds, monitor_ds = split_holdout(full_train, cfg.monitor_size, seed=cfg.seed)
    loader = make_loader(cfg.loader, train_ds, cfg.batch_size, train=True, device=device, seed=cfg.seed,
                         drop_last=False, channels_last=cfg.channels_last)
    c, h, _ = train_ds.images.shape[1:]

    # ---- models
    teacher, teacher_meta = load_or_build_teacher(cfg, train_ds, device, progress)
    student = create_model(cfg.student, train_ds.num_classes, c, train_ds.mean, train_ds.std, h).to(device)
    method_cls = METHODS[cfg.method]
    if method_cls.needs_teacher and teacher is None:
        raise ValueError(f"--method {cfg.method} needs a teacher: pass --teacher CKPT or --teacher ARCH")
    if teacher is not None and "features" in method_cls.teacher_outputs:
        if attach_projection(student, teacher.feature_dim):
            print(f"student: phi width {student.backbone_dim} -> projection to the teacher's {teacher.feature_dim}")
    if cfg.head_init == "teacher":
        if teacher is None:
            raise ValueError("--head-init teacher needs --teacher")
        copy_head(student, teacher)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    threat = ThreatModel(cfg.norm, cfg.eps, cfg.alpha, cfg.attack_steps)
    method = method_cls(student, teacher, threat, **cfg.method_options)
    train_model = torch.compile(student) if cfg.compile else student
    method.student = train_model

    epochs = method.epochs_for(cfg.epochs)
    steps_per_epoch = len(loader) * method.replays
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_schedule(cfg, optimizer, epochs * steps_per_epoch)
    x0, y0 = next(iter(loader))
    precision = resolve_precision(cfg.amp, device, student, (x0, y0))
    scaler = precision.scaler()
    print(f"[{cfg.method}] {cfg.student} on {cfg.dataset} ({len(train_ds)} train, {len(monitor_ds)} held-out), "
          f"{epochs} epochs, device {device}, {precision.note}, loader {getattr(loader, 'kind', cfg.loader)}")

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", dataclasses.asdict(cfg))
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    meta_base = {"config": dataclasses.asdict(cfg), "method": cfg.method,
                 "teacher": cfg.teacher if teacher_meta is None else teacher_meta.get("config", {}).get("student", cfg.teacher)}

    # ---- the one training loop
    train_seconds = 0.0
    best_robust, best_state = -1.0, None
    stopped_early = None
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        student.train()
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        parts_sum: dict[str, float] = {}
        it = loader
        if progress:
            from tqdm import tqdm
            it = tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                      mininterval=1.0, disable=None)
        for step, (x, y) in enumerate(it):
            for _ in range(method.replays):
                with precision.autocast():
                    res = method.loss(x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(res.loss).backward()
                method.after_backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            # bookkeeping without a host sync per step: accumulate on device, read once per epoch
            if step == 0:
                loss_acc = res.loss.detach().float()
                correct_acc = (res.logits.argmax(1) == y).sum()
                parts_acc = {k: torch.as_tensor(v).detach().float() for k, v in res.parts.items()}
            else:
                loss_acc += res.loss.detach().float()
                correct_acc += (res.logits.argmax(1) == y).sum()
                for k, v in res.parts.items():
                    parts_acc[k] += torch.as_tensor(v).detach().float()
            seen += y.numel()
            if progress and step % 20 == 0 and hasattr(it, "set_postfix"):
                it.set_postfix(loss=f"{res.loss.item():.3f}", acc=f"{(res.logits.argmax(1) == y).float().mean().item():.3f}")
        n_steps = step + 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        train_seconds += epoch_time
        loss_sum = float(loss_acc) / n_steps
        correct = int(correct_acc)
        parts_sum = {k: float(v) / n_steps for k, v in parts_acc.items()}
        mon = evaluate_robustness(student, monitor_ds, eps=cfg.eps, norm=cfg.norm, steps=cfg.monitor_steps,
                                  batch_size=500, device=device, seed=cfg.seed, channels_last=cfg.channels_last)
        row = {"epoch": epoch + 1, "loss": loss_sum, **parts_sum, "train_acc": correct / max(seen, 1),
               "heldout_clean_acc": mon["clean_acc"], "heldout_robust_acc": mon["robust_acc"],
               "heldout_attack": f"PGD-{cfg.monitor_steps}", "epoch_seconds": epoch_time,
               "images_per_second": seen * method.replays / epoch_time, "lr": scheduler.get_last_lr()[0]}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum:.4f}  train acc {row['train_acc']:.3f}  held-out clean "
              f"{mon['clean_acc']:.3f} PGD-{cfg.monitor_steps} {mon['robust_acc']:.3f}  {epoch_time:.1f}s "
              f"({row['images_per_second']:.0f} img/s)")
        save_model(out / "last.safetensors", student, {**meta_base, "epoch": epoch + 1})
        drop = getattr(method, "robust_drop_stop", None)
        if drop is not None and cfg.eps > 0:
            if mon["robust_acc"] > best_robust:
                best_robust, best_state = mon["robust_acc"], copy.deepcopy(student.state_dict())
            elif mon["robust_acc"] < best_robust - drop:
                stopped_early = (f"catastrophic overfitting: held-out PGD accuracy fell from {best_robust:.3f} to "
                                 f"{mon['robust_acc']:.3f}; restored the best epoch's weights and stopped")
                print("  " + stopped_early)
                student.load_state_dict(best_state)
                break

    # ---- final evaluation on the test split (never used for any choice above)
    final = save_model(out / "final.safetensors", student, {**meta_base, "epochs_run": epoch + 1})
    test_ds = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if cfg.test_size:
        test_ds = test_ds.subset(torch.arange(min(cfg.test_size, len(test_ds))))
    ev = evaluate_robustness(student, test_ds, eps=cfg.eps, norm=cfg.norm, steps=cfg.eval_steps,
                             restarts=cfg.eval_restarts, batch_size=500, device=device, seed=0,
                             progress=progress and sys.stderr.isatty(), channels_last=cfg.channels_last)
    report = {"method": cfg.method, "student": cfg.student, "teacher": meta_base["teacher"], "dataset": cfg.dataset,
              "device": str(device), "precision": precision.name, "epochs_run": epoch + 1,
              "train_seconds": train_seconds, "images_per_second": len(train_ds) * (epoch + 1) * method.replays / train_seconds,
              "test": ev, "checkpoint": str(final), "stopped_early": stopped_early,
              "teacher_report": (teacher_meta or {}).get("report_path")}
    atomic_write_json(out / "report.json", report)
    print(f"[{cfg.method}] test: clean {100 * ev['clean_acc']:.2f}%  PGD-{cfg.eval_steps} {100 * ev['robust_acc']:.2f}% "
          f"({ev['n']} samples, eps {cfg.eps:g}); trained in {train_seconds:.1f}s -> {out}")
    return report


# --------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.train",
                                description="Train robust models: RRM, its peers, and adversarial-training baselines. "
                                            "With no --method it runs the built-in demo (teacher + RRM student).")
    d = TrainConfig()
    p.add_argument("--config", help="YAML or JSON file with the same keys as the flags (flags override it)")
    p.add_argument("--method", choices=sorted(METHODS), help="training method (default: the demo)")
    p.add_argument("--student", help=f"student architecture ({', '.join(ARCHS)})")
    p.add_argument("--teacher", help="teacher checkpoint (.safetensors) or an architecture to train a teacher for")
    p.add_argument("--teacher-method", help="method that trains an architecture-named teacher (default fast_at)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--head-init", choices=["random", "teacher"])
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["auto", "cosine", "cyclic", "constant"])
    p.add_argument("--eps", type=float, help=f"attack radius in pixel units (default {d.eps})")
    p.add_argument("--norm", choices=["Linf", "L2"])
    p.add_argument("--alpha", type=float, help="training PGD step (default 2.5*eps/steps)")
    p.add_argument("--attack-steps", type=int)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--eval-restarts", type=int)
    p.add_argument("--monitor-size", type=int)
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: fp16+GradScaler or bf16 on CUDA; bf16 on CPU only where measured faster")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--out")
    p.add_argument("--train-size", type=int, help="train on the first N training samples (quick runs)")
    p.add_argument("--test-size", type=int, help="evaluate on the first N test samples (quick runs)")
    p.add_argument("--loader", choices=["auto", "device", "torch", "dali"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    seen = set()
    for cls in METHODS.values():
        for key, opt in cls.options.items():
            if key in seen:
                continue
            seen.add(key)
            p.add_argument("--" + key.replace("_", "-"), type=opt.type, default=None, dest="opt_" + key,
                           help=f"[{cls.name}] {opt.help} (default {opt.default})")
    return p


def load_config_file(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--config {path} not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def config_from_args(args, base: dict | None = None) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = dict(base or {})
    if args.config:
        file_vals = load_config_file(args.config)
        unknown = set(file_vals) - fields - {k for c in METHODS.values() for k in c.options}
        if unknown:
            raise ValueError(f"--config {args.config}: unknown keys {sorted(unknown)}")
        for k, v in file_vals.items():
            if k in fields:
                values[k] = v
            else:
                values.setdefault("method_options", {})[k] = v
    for k, v in vars(args).items():
        if v is None:
            continue
        if k.startswith("opt_"):
            values.setdefault("method_options", {})[k[4:]] = v
        elif k in fields:
            values[k] = v
    cfg = TrainConfig(**values)
    # keep only the options the chosen method takes (shared flags are declared by several methods)
    known = METHODS[cfg.method].options if cfg.method in METHODS else {}
    extra = set(cfg.method_options) - set(known)
    if extra:
        raise ValueError(f"--method {cfg.method} takes no option(s) {sorted(extra)}; it takes {sorted(known) or 'none'}")
    return cfg


def run_demo(args, progress) -> int:
    """Teacher (fast_at cnn_small, cached) -> RRM student (cnn_wide) -> table."""
    base_out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    scfg = config_from_args(args, {**DEMO_STUDENT, "teacher": DEMO_TEACHER["student"],
                                   "teacher_method": DEMO_TEACHER["method"], "teacher_epochs": DEMO_TEACHER["epochs"]})
    scfg.out = str(base_out / "student")
    t0 = time.perf_counter()
    s_report = train_run(scfg, progress=progress)
    t_report = json.loads(Path(s_report["teacher_report"]).read_text())
    rows = [("teacher", t_report), ("student", s_report)]
    print()
    print(f"Demo on {scfg.dataset} ({scfg.norm}, eps={scfg.eps:g}); robust = PGD-{scfg.eval_steps} "
          f"x{scfg.eval_restarts} on the full test split ({s_report['test']['n']} images)")
    print(f"{'role':8} {'model':10} {'method':8} {'clean':>7} {'robust':>7} {'train s':>8} {'img/s':>7}")
    for role, r in rows:
        print(f"{role:8} {r['student']:10} {r['method']:8} {100 * r['test']['clean_acc']:6.2f}% "
              f"{100 * r['test']['robust_acc']:6.2f}% {r['train_seconds']:8.1f} {r['images_per_second']:7.0f}")
    print(f"teacher checkpoint: {t_report['checkpoint']}\nstudent checkpoint: {s_report['checkpoint']}")
    print(f"total wall time {time.perf_counter() - t0:.1f}s")
    atomic_write_json(base_out / "demo.json", {"teacher": t_report, "student": s_report})
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run():
        args = build_parser().parse_args(argv)
        progress = not args.no_progress
        if args.method is None and not args.config:
            return run_demo(args, progress)
        cfg = config_from_args(args)
        train_run(cfg, progress=progress)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
