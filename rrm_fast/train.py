"""The trainer: one loop for every method.

    python -m rrm_fast.train --amp            # the built-in demo (see DEMO below)
    python -m rrm_fast.train --method pgd_at --student cnn_small --epochs 3
    python -m rrm_fast.train --method rrm --teacher runs/t/final.safetensors --student cnn_wide
    python -m rrm_fast.train --resume runs/RUN            # continue a killed or interrupted run
    torchrun --nproc_per_node=4 -m rrm_fast.train ...     # data parallel; --batch-size is global

Each run writes a directory: config.json (resolved), metrics.jsonl (one line per epoch:
losses, clean and robust accuracy on a held-out slice of the TRAIN split, epoch time,
images/s), checkpoints (safetensors + JSON), and report.json with the final test figures.
state/ holds the last two training-state checkpoints (every --checkpoint-every steps and at
each epoch end) from which --resume continues bit for bit; see docs/reliability.md.
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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed as dist_util
from .checkpoint import fit_state_dict, head_classes, load_model, read_state_dict, save_model
from .io import atomic_write_json, sha256_file
from .data import DATASETS, load_dataset, make_loader, split_holdout
from .data.sampling import derive_seed
from .errors import Interrupted, run_cli
from .eval import evaluate_robustness
from .methods import METHODS, ThreatModel
from .models import ARCHS, attach_projection, copy_head, create_model
from .resume import (MetricsLog, capture_rng, join_tensors, load_latest_state, preserved_rng, restore_rng, save_state,
                     split_tensors)
from .runtime import Precision, resolve_device, resolve_precision, seed_everything

log = logging.getLogger("rrm_fast")


@dataclass
class TrainConfig:
    method: str = "natural"
    student: str = "cnn_small"
    teacher: str | None = None          # a checkpoint path, or an architecture to train a teacher for
    teacher_arch: str | None = None     # architecture of a teacher checkpoint from elsewhere (.pt/.pth/.safetensors)
    teacher_method: str = "fast_at"     # how an architecture-named teacher is trained
    teacher_epochs: int = 4
    head_init: str = "random"           # "teacher": start the student's classifier as a copy of the teacher's
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    epochs: int = 2
    batch_size: int = 128               # the GLOBAL batch: each of N processes takes batch_size / N
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
    checkpoint_every: int = 200         # training-state checkpoint every N minibatches (and at each epoch end)
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
# Settings a resumed run may change: they do not alter what is computed (the loaders
# produce the same batches; checkpoint frequency and progress output are bookkeeping).
RESUME_MAY_CHANGE = ("checkpoint_every", "device", "out", "loader")


def cache_dir() -> Path:
    return Path(os.environ.get("RRM_FAST_CACHE", Path.home() / ".cache" / "rrm_fast"))


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM stopped the run after it saved a training state."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (the run's weights are no longer usable)."""


def validate_config(cfg: TrainConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    if cfg.student not in ARCHS:
        raise ValueError(f"unknown --student {cfg.student!r}; choose one of: {', '.join(ARCHS)}")
    if cfg.teacher_arch is not None and cfg.teacher_arch not in ARCHS:
        raise ValueError(f"unknown --teacher-arch {cfg.teacher_arch!r}; choose one of: {', '.join(ARCHS)}")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if not (cfg.eps >= 0 and math.isfinite(cfg.eps)):
        raise ValueError(f"--eps must be >= 0 (got {cfg.eps}); epsilon is in pixel units")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.attack_steps < 1 or cfg.eval_steps < 1:
        raise ValueError("--epochs, --batch-size, --attack-steps and --eval-steps must be >= 1")
    if cfg.monitor_steps < 1 or cfg.eval_restarts < 1:
        raise ValueError(f"--monitor-steps and --eval-restarts must be >= 1 (got {cfg.monitor_steps}, {cfg.eval_restarts})")
    if cfg.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1 minibatch (got {cfg.checkpoint_every}); "
                         "a state is also saved at each epoch end")
    if not (cfg.lr >= 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"--lr must be a number >= 0 (got {cfg.lr})")
    if cfg.alpha is not None and not cfg.alpha >= 0:
        raise ValueError(f"--alpha must be >= 0 (got {cfg.alpha}); leave it out for 2.5*eps/steps")
    for name in ("train_size", "test_size"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
    if cfg.teacher_arch is not None and cfg.teacher in ARCHS:
        raise ValueError(f"--teacher-arch names the architecture of a teacher FILE; --teacher {cfg.teacher} already "
                         "names an architecture to train (drop one of them)")
    if METHODS[cfg.method].needs_teacher and cfg.teacher is None:  # before any data is loaded
        raise ValueError(f"--method {cfg.method} needs a teacher: pass --teacher CKPT or --teacher ARCH")


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


def load_external_teacher(path: str, arch: str, ds_train, device):
    """A teacher from elsewhere (RobustBench, timm, torchvision, the robustness library...):
    ``arch`` built for the dataset's input shape, with the file's weights mapped onto it."""
    state = read_state_dict(path)
    # built with the file's class count, so a mismatch is reported as one, not as a shape error
    classes = head_classes(state) or ds_train.num_classes
    c, h = ds_train.images.shape[1], ds_train.images.shape[2]
    model = create_model(arch, classes, c, ds_train.mean, ds_train.std, h)
    fit_state_dict(model, state, path)
    meta = {"config": {"student": arch, "method": "external"}, "sha256": sha256_file(path), "path": str(path)}
    return model.to(device), meta


def load_or_build_teacher(cfg: TrainConfig, ds_train, device, progress=True):
    """A frozen teacher: loaded from a checkpoint, or trained (fast_at by default) and cached
    under $RRM_FAST_CACHE keyed by its config so later runs reuse it (an interrupted teacher
    run continues from its own training state the next time)."""
    spec = cfg.teacher
    if spec is None:
        return None, None
    cached_report = None
    if spec in ARCHS:
        # options both methods declare reach the teacher too (crt + gaussian_aug share --sigma)
        t_opts = METHODS[cfg.teacher_method].options if cfg.teacher_method in METHODS else {}
        tcfg = dataclasses.replace(cfg, method=cfg.teacher_method, student=spec, epochs=cfg.teacher_epochs,
                                   teacher=None, teacher_arch=None, head_init="random", out=None,
                                   method_options={k: v for k, v in cfg.method_options.items() if k in t_opts})
        key = config_hash(tcfg, TEACHER_KEYS)
        ckpt = cache_dir() / "teachers" / key / "final.safetensors"
        ctx, _ = dist_util.init_from_env(cfg.device)
        dist_util.barrier(ctx)  # every rank looks before rank 0 may write it
        if (ckpt.exists() and (ckpt.parent / "report.json").exists()):
            if ctx.is_main:
                print(f"teacher: reusing cached {cfg.teacher_method} {spec} from {ckpt}")
        else:
            tcfg.out = str(ckpt.parent)
            if ctx.is_main:
                print(f"teacher: training {cfg.teacher_method} {spec} (cached at {ckpt.parent})")
            try:
                train_run(tcfg, progress=progress, exist_ok=True, resume=True)
            except TrainingInterrupted as e:
                raise TrainingInterrupted(e.signum, f"{e.message.split(';')[0]} while training the teacher; its state is "
                                                    "saved in the cache and running the same command again continues it") from None
        spec = str(ckpt)
        cached_report = str(ckpt.parent / "report.json")
    if cfg.teacher_arch is not None:
        teacher, meta = load_external_teacher(spec, cfg.teacher_arch, ds_train, device)
    else:
        p = Path(spec)
        if p.exists() and not p.with_suffix(".json").exists():
            raise ValueError(f"--teacher {spec} is not an rrm_fast checkpoint (no {p.with_suffix('.json').name} sidecar); "
                             "to use weights from elsewhere name their architecture with --teacher-arch ARCH")
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
        raise ValueError(f"output directory {out} already holds a run (config.json); choose another --out, delete it, "
                         f"or continue it with --resume {out}")


def check_resume_config(out: Path, cfg: TrainConfig) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is unreadable; the run cannot be resumed - start a new one with another --out") from None
    now = dataclasses.asdict(cfg)
    diff = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        k = diff[0]
        raise ValueError(f"{out} was started with {k}={saved[k]!r}, not {now[k]!r}; a resumed run keeps its own settings "
                         f"(differing: {', '.join(diff)}) - start a new run with another --out to change them")


class EpochSums:
    """Per-epoch training figures summed on the device: no host sync per step, read once per
    epoch (and saved in training-state checkpoints, so a resumed epoch reports the same)."""

    def __init__(self):
        self.loss = self.correct = None
        self.parts: dict = {}
        self.steps = 0
        self.seen = 0

    def add(self, res, y) -> None:
        loss = res.loss.detach().float()
        correct = (res.logits.argmax(1) == y).sum()
        parts = {k: torch.as_tensor(v).detach().float() for k, v in res.parts.items()}
        if self.loss is None:
            self.loss, self.correct = loss.clone(), correct.clone()
            self.parts = {k: v.clone() for k, v in parts.items()}
        else:
            self.loss += loss
            self.correct += correct
            for k, v in parts.items():
                self.parts[k] += v
        self.steps += 1
        self.seen += y.numel()

    def state(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "parts": self.parts, "steps": self.steps, "seen": self.seen}

    def load(self, state: dict) -> None:
        self.loss, self.correct, self.parts = state["loss"], state["correct"], dict(state["parts"] or {})
        self.steps, self.seen = state["steps"], state["seen"]

    def figures(self, ctx) -> tuple[float, float, dict, int]:
        """(mean loss, train accuracy, mean parts, samples seen) over all ranks."""
        if self.loss is None:
            raise ValueError("an epoch ran no step; the loader yielded no batch")
        names = sorted(self.parts)
        vec = torch.stack([self.loss.double(), self.correct.double(), *(self.parts[k].double() for k in names),
                           torch.tensor(float(self.seen), dtype=torch.float64, device=self.loss.device),
                           torch.tensor(float(self.steps), dtype=torch.float64, device=self.loss.device)])
        dist_util.all_reduce_sum_(ctx, [vec])
        vals = vec.tolist()
        steps, seen = vals[-1], int(vals[-2])
        if ctx.enabled:
            loss = vals[0] / steps
            parts = {k: v / steps for k, v in zip(names, vals[2:-2])}
        else:  # the one-process figures exactly as float32 sums give them
            loss = float(self.loss) / self.steps
            parts = {k: float(v) / self.steps for k, v in self.parts.items()}
        return loss, int(vals[1]) / max(seen, 1), parts, seen


class FiniteWatch:
    """Finds the first non-finite loss without a host sync per step: flags accumulate on the
    device and are read at checkpoint boundaries and epoch ends (before anything is saved).

    Without a GradScaler the first NaN/inf loss is an error. With one (fp16 on CUDA), a
    non-finite loss makes the scaler skip that step, as with any fp16 overflow, and is an
    error only when every step since the previous check was non-finite."""

    def __init__(self, device, tolerate_skips: bool):
        self.tolerate_skips = tolerate_skips
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self.last_good = torch.full((), float("nan"), dtype=torch.float32, device=device)
        self.bad_count = torch.zeros((), dtype=torch.int64, device=device)
        self.observed = 0

    def observe(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        clean = self.first_bad < 0
        self.last_good = torch.where(finite & clean, loss, self.last_good)
        newly_bad = ~finite & clean
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_count += ~finite
        self.observed += 1

    def check(self, ctx, cfg: TrainConfig, steps_per_epoch: int) -> None:
        if self.observed == 0:
            return
        bad_count, first_bad = int(self.bad_count), int(self.first_bad)
        failed = first_bad >= 0 and (not self.tolerate_skips or bad_count >= self.observed)
        failed = dist_util.any_rank(ctx, failed)
        if failed:
            first_bad = dist_util.min_over_ranks(ctx, first_bad if first_bad >= 0 else 2**62)
            epoch, batch = divmod(first_bad, steps_per_epoch)
            last = float(self.last_good)
            raise TrainingDiverged(
                f"training diverged: the loss became {float(self.bad_value) if int(self.first_bad) == first_bad else 'nan'} "
                f"at step {first_bad + 1} (epoch {epoch + 1}, batch {batch + 1}); the last finite loss was {last:.6g}; "
                f"nothing was saved after it - "
                f"lower --lr (now {cfg.lr:g}){', or drop --amp' if cfg.amp else ''}, or check the data")
        self.bad_count.zero_()
        self.first_bad.fill_(-1)
        self.observed = 0


class StopSignals:
    """SIGINT / SIGTERM: remember the signal and let the loop save a training state at the
    next step boundary, then stop. A second signal, or one arriving once training is over
    (the state is already saved), stops at once."""

    def __init__(self, resume_hint: str):
        self.signum: int | None = None
        self.immediate = False
        self.resume_hint = resume_hint
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.immediate or self.signum is not None:
            raise TrainingInterrupted(signum, f"interrupted by {signal.Signals(signum).name}; {self.resume_hint}")
        self.signum = signum


def sharded_eval(ctx, model, ds, **kw) -> dict:
    """evaluate_robustness over all ranks: each takes samples rank::world_size, counts are summed."""
    if not ctx.enabled:
        return evaluate_robustness(model, ds, **kw)
    part = ds.subset(torch.arange(ctx.rank, len(ds), ctx.world_size))
    res = evaluate_robustness(model, part, **kw)
    counts = torch.tensor([res["n"], round(res["clean_acc"] * res["n"]), round(res["robust_acc"] * res["n"])],
                          dtype=torch.float64)
    torch.distributed.all_reduce(counts, group=ctx.control_group)
    n, clean, robust = (int(v) for v in counts.tolist())
    res.update(n=n, clean_acc=clean / max(n, 1), robust_acc=robust / max(n, 1))
    return res


def precision_named(name: str, device, why: str) -> Precision:
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    return Precision(dtype, device, f"{name} ({why})")


# --------------------------------------------------------------------------- the run
def train_run(cfg: TrainConfig, progress: bool = True, exist_ok: bool = False, resume: bool = False) -> dict:
    """Train one model with one method; returns the report (also written to OUT/report.json).

    ``resume``: continue from the newest training state in ``cfg.out`` (bit for bit on the
    same hardware), or start there from scratch when it has none."""
    validate_config(cfg)
    ctx, rank_device = dist_util.init_from_env(cfg.device)
    device = rank_device or resolve_device(cfg.device)
    world = ctx.world_size
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over the {world} "
                         f"processes; use a multiple of {world}")
    out = Path(dist_util.broadcast_from_main(
        ctx, cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}-{cfg.student}"))
    say = print if ctx.is_main else (lambda *a, **k: None)
    if resume:
        check_resume_config(out, cfg)
    else:
        check_out_dir(out, cfg, exist_ok)
    loaded = load_latest_state(out, say) if resume else None
    dist_util.barrier(ctx)  # every rank has looked at OUT before rank 0 writes to it
    if loaded is not None:
        s_tensors, s_meta, s_path = loaded
        if s_meta["world_size"] != world:
            raise ValueError(f"{out} was trained by {s_meta['world_size']} process(es); resume it with the same number "
                             f"(torchrun --nproc_per_node={s_meta['world_size']}), not {world}")
        if s_meta.get("finished") and (out / "report.json").exists():
            say(f"{out}: the run is already complete; its report is {out / 'report.json'}")
            return json.loads((out / "report.json").read_text())
    seed_everything(cfg.seed)

    # ---- data: train split minus a held-out monitoring slice; the test split only at the end
    full_train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    if cfg.train_size:
        full_train = full_train.subset(torch.arange(min(cfg.train_size + cfg.monitor_size, len(full_train))))
    train_ds, monitor_ds = split_holdout(full_train, cfg.monitor_size, seed=cfg.seed)
    loader = make_loader(cfg.loader, train_ds, cfg.batch_size // world, train=True, device=device, seed=cfg.seed,
                         drop_last=False, channels_last=cfg.channels_last, rank=ctx.rank, world_size=world)
    c, h, _ = train_ds.images.shape[1:]

    # ---- models (building or loading a teacher leaves the student's random streams alone)
    method_cls = METHODS[cfg.method]
    if cfg.teacher is not None and not method_cls.needs_teacher and cfg.head_init != "teacher":
        # a method without a teacher never pays for loading or training one
        say(f"--method {cfg.method} uses no teacher: ignoring --teacher {cfg.teacher}")
        teacher, teacher_meta = None, None
    else:
        with preserved_rng(device):
            teacher, teacher_meta = load_or_build_teacher(cfg, train_ds, device, progress)
    student = create_model(cfg.student, train_ds.num_classes, c, train_ds.mean, train_ds.std, h).to(device)
    if method_cls.needs_teacher and teacher is None:
        raise ValueError(f"--method {cfg.method} needs a teacher: pass --teacher CKPT or --teacher ARCH")
    if teacher is not None and "features" in method_cls.teacher_outputs:
        if attach_projection(student, teacher.feature_dim):
            say(f"student: phi width {student.backbone_dim} -> projection to the teacher's {teacher.feature_dim}")
    if cfg.head_init == "teacher":
        if teacher is None:
            raise ValueError("--head-init teacher needs --teacher")
        copy_head(student, teacher)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    if ctx.enabled:
        dist_util.broadcast_module_(ctx, student)
        if ctx.rank > 0:  # attack random starts differ per rank, as their samples do; rank 0 keeps the 1-process stream
            seed_everything(derive_seed("rank", cfg.seed, ctx.rank))
    threat = ThreatModel(cfg.norm, cfg.eps, cfg.alpha, cfg.attack_steps)
    method = method_cls(student, teacher, threat, **cfg.method_options)
    train_model = torch.compile(student) if cfg.compile else student
    method.student = train_model
    teacher_sha = (teacher_meta or {}).get("sha256")

    epochs = method.epochs_for(cfg.epochs)
    batches_per_epoch = len(loader)
    steps_per_epoch = batches_per_epoch * method.replays
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_schedule(cfg, optimizer, epochs * steps_per_epoch)
    if loaded is not None:
        precision = precision_named(s_meta["precision"], device, "as when the run started")
    else:
        precision = resolve_precision(cfg.amp, device, student, next(iter(loader)) if cfg.amp else None)
        if ctx.enabled:  # a CPU bf16 speed probe may decide differently per rank; rank 0's choice holds
            chosen = dist_util.broadcast_from_main(ctx, precision.name)
            if chosen != precision.name:
                precision = precision_named(chosen, device, "rank 0's choice")
    scaler = precision.scaler()
    grad_sync = dist_util.GradientAverager(ctx, student.parameters()) if ctx.enabled else None
    watch = FiniteWatch(device, tolerate_skips=precision.use_scaler)
    sums = EpochSums()
    say(f"[{cfg.method}] {cfg.student} on {cfg.dataset} ({len(train_ds)} train, {len(monitor_ds)} held-out), "
        f"{epochs} epochs, device {device}{f' x{world} processes' if ctx.enabled else ''}, {precision.note}, "
        f"loader {getattr(loader, 'kind', cfg.loader)}")

    # ---- where the run stands: from the start, or from the newest training state
    pos = {"epoch": 0, "batch": 0, "global_step": 0, "epochs_done": 0, "train_seconds": 0.0, "epoch_seconds": 0.0,
           "best_robust": -1.0, "stopped_early": None, "finished": False}
    best_state = None
    if loaded is not None:
        if s_meta.get("teacher_sha256") != teacher_sha:
            raise ValueError(f"the teacher checkpoint changed since {out} started (sha256 differs); resume needs the "
                             "same teacher - start a new run with another --out")
        if s_meta["batches_per_epoch"] != batches_per_epoch:
            raise ValueError(f"{out}: the data gives {batches_per_epoch} batches per epoch but the run had "
                             f"{s_meta['batches_per_epoch']}; resume with the same data and settings")
        student.load_state_dict({k[len("model/"):]: v for k, v in s_tensors.items() if k.startswith("model/")})
        optimizer.load_state_dict(join_tensors(s_meta["optimizer"], s_tensors))
        for p in student.parameters():  # give momentum buffers their parameter's memory layout back
            for k, v in optimizer.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    optimizer.state[p][k] = torch.empty_like(p).copy_(v)
        scheduler.load_state_dict(s_meta["scheduler"])
        if s_meta["scaler"]:
            scaler.load_state_dict(s_meta["scaler"])
        if any(k.startswith("best/") for k in s_tensors):
            best_state = {k[len("best/"):]: v.to(device) for k, v in s_tensors.items() if k.startswith("best/")}
        pos.update({k: s_meta[k] for k in pos})
        mine = f"rank{ctx.rank}"
        rank_meta = s_meta["ranks"][ctx.rank]
        method.load_state_dict(join_tensors(rank_meta["method"], s_tensors, device))
        if rank_meta["sums"] is not None:
            sums.load(join_tensors(rank_meta["sums"], s_tensors, device))
        restore_rng(rank_meta["rng"], device, f"{mine}/rng", s_tensors)
        say(f"resume: continuing {out} from {s_path.name} (epoch {pos['epoch'] + 1}, batch {pos['batch']}, "
            f"step {pos['global_step']})")

    metrics = MetricsLog(out / "metrics.jsonl")
    meta_base = {"config": dataclasses.asdict(cfg), "method": cfg.method,
                 "teacher": cfg.teacher if teacher_meta is None else teacher_meta.get("config", {}).get("student", cfg.teacher)}
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (resume and (out / "config.json").exists()):
            atomic_write_json(out / "config.json", dataclasses.asdict(cfg))
        if loaded is not None:
            metrics.truncate(pos["epochs_done"])  # rows of an epoch the checkpoint had not finished go
        else:
            metrics.reset()

    def save_training_state() -> Path | None:
        """All ranks take part; rank 0 writes. Per-rank parts: RNG streams, method state, epoch sums."""
        rank_tensors: dict = {}
        prefix = f"rank{ctx.rank}"
        rank_meta = {"rng": capture_rng(device, f"{prefix}/rng", rank_tensors),
                     "method": split_tensors(method.state_dict(), f"{prefix}/method", rank_tensors),
                     "sums": split_tensors(sums.state(), f"{prefix}/sums", rank_tensors) if sums.steps else None}
        gathered = dist_util.gather_to_main(ctx, (rank_meta, {k: v.cpu() for k, v in rank_tensors.items()}))
        if not ctx.is_main:
            return None
        tensors = {f"model/{k}": v for k, v in student.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best/{k}": v for k, v in best_state.items()})
        meta = {**pos, "world_size": world, "batches_per_epoch": batches_per_epoch, "precision": precision.name,
                "teacher_sha256": teacher_sha,
                "optimizer": split_tensors(optimizer.state_dict(), "optimizer", tensors),
                "scheduler": split_tensors(scheduler.state_dict(), "scheduler", tensors),
                "scaler": split_tensors(scaler.state_dict(), "scaler", tensors),
                "ranks": [g[0] for g in gathered]}
        for _, t in gathered:
            tensors.update(t)
        return save_state(out, pos["global_step"], tensors, meta)

    launcher = f"torchrun --nproc_per_node={world} -m rrm_fast.train" if ctx.enabled else "python -m rrm_fast.train"
    stop = StopSignals(f"the last training state in {out / 'state'} is kept; continue with: {launcher} --resume {out}")

    def interrupted(where: str) -> TrainingInterrupted:
        name = signal.Signals(stop.signum or signal.SIGTERM).name
        return TrainingInterrupted(stop.signum or signal.SIGTERM,
                                   f"interrupted by {name} at {where}; training state saved; continue with: "
                                   f"{launcher} --resume {out}")

    def stop_requested() -> bool:
        if not ctx.enabled:
            return stop.signum is not None
        signum = dist_util.min_over_ranks(ctx, stop.signum or 1_000)  # any rank's signal stops every rank
        if signum != 1_000 and stop.signum is None:
            stop.signum = signum
        return signum != 1_000

    # ---- the one training loop
    stop.install()
    try:
        epoch = pos["epoch"]
        while not pos["finished"] and epoch < epochs:
            loader.set_epoch(epoch)
            loader.set_start_batch(pos["batch"])
            student.train()
            t0 = time.perf_counter()
            it = loader
            if progress:
                from tqdm import tqdm
                it = tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                          mininterval=1.0, disable=None if ctx.is_main else True, total=batches_per_epoch,
                          initial=pos["batch"])
            for x, y in it:
                for _ in range(method.replays):
                    with precision.autocast():
                        res = method.loss(x, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(res.loss).backward()
                    if grad_sync is not None:
                        grad_sync.finish()
                    method.after_backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    watch.observe(res.loss, pos["global_step"])
                sums.add(res, y)
                pos["batch"] += 1
                pos["global_step"] += 1
                if progress and pos["batch"] % 20 == 0 and hasattr(it, "set_postfix"):
                    it.set_postfix(loss=f"{res.loss.item():.3f}",
                                   acc=f"{(res.logits.argmax(1) == y).float().mean().item():.3f}")
                if pos["batch"] < batches_per_epoch:  # the epoch end saves its own state
                    halt = stop_requested()
                    if halt or pos["global_step"] % cfg.checkpoint_every == 0:
                        watch.check(ctx, cfg, batches_per_epoch)
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        pos["epoch_seconds"] += time.perf_counter() - t0
                        save_training_state()
                        t0 = time.perf_counter()
                        if halt:
                            raise interrupted(f"epoch {epoch + 1}, batch {pos['batch']} (step {pos['global_step']})")

            # ---- epoch end: figures, held-out monitoring, metrics row, checkpoints
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_time = pos["epoch_seconds"] + time.perf_counter() - t0
            watch.check(ctx, cfg, batches_per_epoch)
            loss_mean, train_acc, parts_mean, seen = sums.figures(ctx)
            dist_util.broadcast_buffers_(ctx, student)
            with preserved_rng(device):  # monitoring never moves the training RNG streams
                mon = sharded_eval(ctx, student, monitor_ds, eps=cfg.eps, norm=cfg.norm, steps=cfg.monitor_steps,
                                   batch_size=500, device=device, seed=cfg.seed, channels_last=cfg.channels_last)
            row = {"epoch": epoch + 1, "loss": loss_mean, **parts_mean, "train_acc": train_acc,
                   "heldout_clean_acc": mon["clean_acc"], "heldout_robust_acc": mon["robust_acc"],
                   "heldout_attack": f"PGD-{cfg.monitor_steps}", "epoch_seconds": epoch_time,
                   "images_per_second": seen * method.replays / epoch_time, "lr": scheduler.get_last_lr()[0]}
            if ctx.is_main:
                metrics.append(row)
                save_model(out / "last.safetensors", student, {**meta_base, "epoch": epoch + 1})
            say(f"  epoch {epoch + 1}/{epochs}: loss {loss_mean:.4f}  train acc {train_acc:.3f}  held-out clean "
                f"{mon['clean_acc']:.3f} PGD-{cfg.monitor_steps} {mon['robust_acc']:.3f}  {epoch_time:.1f}s "
                f"({row['images_per_second']:.0f} img/s)")
            drop = getattr(method, "robust_drop_stop", None)
            if drop is not None and cfg.eps > 0:
                if mon["robust_acc"] > pos["best_robust"]:
                    pos["best_robust"], best_state = mon["robust_acc"], copy.deepcopy(student.state_dict())
                elif mon["robust_acc"] < pos["best_robust"] - drop:
                    pos["stopped_early"] = (f"catastrophic overfitting: held-out PGD accuracy fell from "
                                            f"{pos['best_robust']:.3f} to {mon['robust_acc']:.3f}; restored the best "
                                            "epoch's weights and stopped")
                    say("  " + pos["stopped_early"])
                    student.load_state_dict(best_state)
            epoch += 1
            sums = EpochSums()
            pos.update(epoch=epoch, batch=0, epochs_done=pos["epochs_done"] + 1, epoch_seconds=0.0,
                       train_seconds=pos["train_seconds"] + epoch_time,
                       finished=epoch >= epochs or pos["stopped_early"] is not None)
            save_training_state()
            if not pos["finished"] and stop_requested():
                raise interrupted(f"the end of epoch {epoch} (step {pos['global_step']})")
        # the state is saved: from here on a signal stops at once and --resume redoes the final evaluation
        if stop_requested():
            raise interrupted("the end of training")
        stop.immediate = True

        # ---- final evaluation on the test split (never used for any choice above)
        epochs_run = pos["epochs_done"]
        final = out / "final.safetensors"
        if ctx.is_main:
            final = save_model(final, student, {**meta_base, "epochs_run": epochs_run})
        test_ds = load_dataset(cfg.dataset, "test", cfg.data_dir)
        if cfg.test_size:
            test_ds = test_ds.subset(torch.arange(min(cfg.test_size, len(test_ds))))
        dist_util.broadcast_buffers_(ctx, student)
        ev = sharded_eval(ctx, student, test_ds, eps=cfg.eps, norm=cfg.norm, steps=cfg.eval_steps,
                          restarts=cfg.eval_restarts, batch_size=500, device=device, seed=0,
                          progress=progress and ctx.is_main and sys.stderr.isatty(), channels_last=cfg.channels_last)
        train_seconds = pos["train_seconds"]
        report = {"method": cfg.method, "student": cfg.student, "teacher": meta_base["teacher"], "dataset": cfg.dataset,
                  "device": str(device), "precision": precision.name, "epochs_run": epochs_run,
                  "train_seconds": train_seconds,
                  "images_per_second": len(train_ds) * epochs_run * method.replays / max(train_seconds, 1e-9),
                  "test": ev, "checkpoint": str(final), "stopped_early": pos["stopped_early"],
                  "teacher_report": (teacher_meta or {}).get("report_path"), "world_size": world}
        if ctx.is_main:
            atomic_write_json(out / "report.json", report)
        say(f"[{cfg.method}] test: clean {100 * ev['clean_acc']:.2f}%  PGD-{cfg.eval_steps} {100 * ev['robust_acc']:.2f}% "
            f"({ev['n']} samples, eps {cfg.eps:g}); trained in {train_seconds:.1f}s -> {out}")
        dist_util.barrier(ctx)
        return report
    finally:
        stop.restore()
        if grad_sync is not None:
            grad_sync.remove()


# --------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.train",
                                description="Train robust models: RRM, its peers, and adversarial-training baselines. "
                                            "With no --method it runs the built-in demo (teacher + RRM student).")
    d = TrainConfig()
    p.add_argument("--config", help="YAML or JSON file with the same keys as the flags (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest training state, with its saved settings")
    p.add_argument("--method", choices=sorted(METHODS), help="training method (default: the demo)")
    p.add_argument("--student", help=f"student architecture ({', '.join(ARCHS)})")
    p.add_argument("--teacher", help="teacher checkpoint (.safetensors, or .pt/.pth with --teacher-arch) or an "
                                     "architecture to train a teacher for")
    p.add_argument("--teacher-arch", help="architecture of a teacher file from elsewhere (RobustBench, timm, "
                                          "torchvision state dicts); weights are mapped onto it")
    p.add_argument("--teacher-method", help="method that trains an architecture-named teacher (default fast_at)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--head-init", choices=["random", "teacher"])
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help=f"global batch; under torchrun each process takes batch/N "
                                                  f"(default {d.batch_size})")
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
    p.add_argument("--monitor-steps", type=int)
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
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"save a training state every N minibatches, besides each epoch end (default {d.checkpoint_every})")
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


RESUME_FLAGS = ("resume", "no_progress", "device", "checkpoint_every")


def config_for_resume(args) -> TrainConfig:
    """--resume RUN_DIR: the run's own config.json; only bookkeeping flags may be added."""
    run_dir = Path(args.resume)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no config.json there; pass the directory of a run started by "
                         "python -m rrm_fast.train (its --out)")
    extra = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v not in (None, False)]
    if extra:
        flag = "--" + extra[0].removeprefix("opt_").replace("_", "-")
        raise ValueError(f"--resume continues {run_dir} with its saved settings; drop {flag} (only --device, "
                         "--checkpoint-every and --no-progress may be given), or start a new run with another --out")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--resume {run_dir}: config.json is not valid JSON ({e.msg}); the run cannot be resumed") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"--resume {run_dir}: config.json has keys this version does not know {sorted(unknown)}")
    cfg = TrainConfig(**values)
    cfg.out = str(run_dir)
    for k in ("device", "checkpoint_every"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
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
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # errors alone go to stderr

    def run():
        args = build_parser().parse_args(argv)
        progress = not args.no_progress
        if args.resume:
            train_run(config_for_resume(args), progress=progress, resume=True)
            return 0
        if args.method is None and not args.config:
            return run_demo(args, progress)
        cfg = config_from_args(args)
        train_run(cfg, progress=progress)
        return 0

    try:
        return run_cli(run)  # also turns TrainingInterrupted into its message and exit code
    finally:
        dist_util.shutdown()


if __name__ == "__main__":
    sys.exit(main())
