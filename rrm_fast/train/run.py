"""``train_run``: one run, from a configuration to its report.

    report = train_run(TrainConfig(method="pgd_at", epochs=3), progress=False)
    report = train_run(cfg, clock=time.thread_time, callbacks=[MyCallback()])

In the order data flows: the configuration's check (config.validate_config), the run
directory (state.open_run: nothing is built for a run that cannot start), the train split
and the start-up checks that need it or the models (preflight.py; nothing is written before
they pass), the teacher's own run when an architecture-named teacher is not cached yet
(teacher.py; it finishes before this run builds anything), seeding, the data (the train
split minus a held-out slice; the test split only at the end), the models and the method,
the optimizer, schedule and precision, the callbacks and the restored training state; then
the Trainer's epochs (loop.py), the final evaluation on the test split and report.json.

Under torchrun each process runs this with its rank: the student is wrapped in
DistributedDataParallel for the training forward and backward only (Method.train_model);
attacks and input-gradient passes run on the unwrapped module.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass

import torch

from .. import distributed as dist_util
from ..checkpoint import save_model
from ..data import load_dataset, make_loader, split_holdout
from ..data.sampling import derive_seed
from ..io import atomic_write_json
from ..methods import METHODS, ThreatModel
from ..models import attach_projection, copy_head, create_model
from ..resume import preserved_rng
from ..runtime import Precision, resolve_device, resolve_precision, seed_everything
from . import teacher as teachers
from .check import RobustnessCheck, test_split
from .callbacks import (EarlyStopOnRobustDrop, EpochSummary, FiniteWatch, MetricsJSONL, ProgressBar, StateCheckpoint,
                        StopSignals, TensorBoardWriter, TrainingInterrupted)
from .config import TrainConfig, validate_config
from .loop import Trainer
from .preflight import preflight
from .state import RunDir, TrainingState, open_run

log = logging.getLogger("rrm_fast.train")


def train_run(cfg: TrainConfig, *, progress: bool = True, exist_ok: bool = False, resume: bool = False,
              clock=None, callbacks=()) -> dict:
    """Train one model with one method; returns the report (also written to OUT/report.json).

    ``resume``: continue from the newest training state in ``cfg.out`` (bit for bit on the
    same hardware), or start there from scratch when it has none. ``clock``: the function
    that times the epochs (default time.perf_counter; the benchmarks pass a CPU-time clock).
    ``callbacks``: extra loop callbacks (callbacks.Callback), run after the finite-loss watch
    and before the writers and the checkpoint."""
    validate_config(cfg)
    ctx, rank_device = dist_util.init_from_env(cfg.device)
    device = rank_device or resolve_device(cfg.device)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over the "
                         f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    run = open_run(cfg, ctx, resume=resume, exist_ok=exist_ok)
    if run.report is not None:
        return run.report
    full_train = load_dataset(cfg.dataset, "train", cfg.data_dir, resolution=cfg.resolution)
    preflight(cfg, full_train, speak=ctx.is_main)  # nothing is written before these checks pass
    clock = clock or time.perf_counter
    train_teacher(cfg, ctx, device, full_train, progress=progress, clock=clock)
    return _train(cfg, run, ctx, device, full_train, resume=resume, progress=progress, clock=clock, callbacks=callbacks)


def train_teacher(cfg: TrainConfig, ctx, device, full_train, *, progress: bool, clock) -> None:
    """Train an architecture-named teacher into its cache folder unless it is there (its own run)."""
    tcfg = teachers.teacher_run_config(cfg) if teachers.uses_teacher(cfg) else None
    if tcfg is None:
        return
    dist_util.barrier(ctx)  # every rank looks before rank 0 may write it
    if teachers.is_trained(tcfg):
        say(ctx, "teacher: reusing cached %s %s from %s", cfg.teacher_method, cfg.teacher, tcfg.out)
        return
    validate_config(tcfg)
    say(ctx, "teacher: training %s %s (cached at %s)", cfg.teacher_method, cfg.teacher, tcfg.out)
    try:
        run = open_run(tcfg, ctx, resume=True, exist_ok=True)
        if run.report is None:
            _train(tcfg, run, ctx, device, full_train, resume=True, progress=progress, clock=clock, callbacks=())
    except TrainingInterrupted as e:
        raise TrainingInterrupted(e.signum, f"{e.message.split(';')[0]} while training the teacher; its state is saved "
                                            "in the cache and running the same command again continues it") from None


def say(ctx, msg: str, *args) -> None:
    if ctx.is_main:
        log.info(msg, *args)


# --------------------------------------------------------------------------- the pieces of a run
@dataclass
class Data:
    train: object
    monitor: object
    loader: object


def split_train(cfg: TrainConfig, full_train) -> tuple:
    """(training images with the run's augmentation, the held-out slice of the TRAIN split that
    the per-epoch check and the benchmarks' choices use): a function of the config alone."""
    if cfg.train_size:
        full_train = full_train.subset(torch.arange(min(cfg.train_size + cfg.monitor_size, len(full_train))))
    train_ds, monitor_ds = split_holdout(full_train, cfg.monitor_size, seed=cfg.seed)
    if cfg.augment != "auto":  # in-memory data only (preflight)
        train_ds = dataclasses.replace(train_ds, pad=(train_ds.pad or 2) if "crop" in cfg.augment else 0,
                                       flip="flip" in cfg.augment)
    return train_ds, monitor_ds


def load_data(cfg: TrainConfig, ctx, device, full_train) -> Data:
    """The train split minus a seeded held-out slice (for the per-epoch check), and its loader."""
    train_ds, monitor_ds = split_train(cfg, full_train)
    loader = make_loader(cfg.loader, train_ds, cfg.batch_size // ctx.world_size, train=True, device=device,
                         seed=cfg.seed, drop_last=False, channels_last=cfg.channels_last, rank=ctx.rank,
                         world_size=ctx.world_size)
    return Data(train_ds, monitor_ds, loader)


@dataclass
class Models:
    student: torch.nn.Module            # the plain module: weights, state dicts, checkpoints
    teacher: torch.nn.Module | None
    teacher_meta: dict | None
    method: object


def build_models(cfg: TrainConfig, ctx, device, train_ds) -> Models:
    """Teacher (loaded without moving the student's random streams), student, method."""
    method_cls = METHODS[cfg.method]
    teacher = teacher_meta = None
    if teachers.uses_teacher(cfg):
        with preserved_rng(device):
            teacher, teacher_meta = teachers.load_teacher(cfg, train_ds, device)
    elif cfg.teacher is not None:
        say(ctx, "--method %s uses no teacher: ignoring --teacher %s", cfg.method, cfg.teacher)
    c, h, _ = train_ds.image_shape
    student = create_model(cfg.student, train_ds.num_classes, c, train_ds.mean, train_ds.std, h).to(device)
    if teacher is not None and "features" in method_cls.teacher_outputs:
        if attach_projection(student, teacher.feature_dim):
            say(ctx, "student: phi width %d -> projection to the teacher's %d", student.backbone_dim, teacher.feature_dim)
    if cfg.head_init == "teacher":
        if teacher is None:
            raise ValueError("--head-init teacher needs --teacher")
        copy_head(student, teacher)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    forward_model = torch.compile(student) if cfg.compile else student
    train_model = forward_model
    if ctx.enabled:  # DDP broadcasts rank 0's weights at construction; it averages gradients in the backward
        train_model = torch.nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False)  # buffers (BatchNorm statistics) are broadcast before each evaluation
        if ctx.rank > 0:  # attack random starts differ per rank, as their samples do; rank 0 keeps the 1-process stream
            seed_everything(derive_seed("rank", cfg.seed, ctx.rank))
    threat = ThreatModel(cfg.norm, cfg.eps, cfg.alpha, cfg.attack_steps)
    method = method_cls(forward_model, teacher, threat, train_model=train_model, **cfg.method_options)
    if cfg.compile and method.compile_conflict():
        raise ValueError(method.compile_conflict())
    return Models(student, teacher, teacher_meta, method)


def make_schedule(kind: str, optimizer, total_steps: int):
    """cosine | cyclic | constant learning-rate multiplier over ``total_steps`` optimizer steps."""
    if kind == "constant":
        fn = lambda s: 1.0  # noqa: E731
    elif kind == "cosine":
        fn = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))  # noqa: E731
    elif kind == "cyclic":  # Wong et al.: linear up to the peak at 2/5 of training, then linear down to 0
        peak = max(1, int(0.4 * total_steps))
        fn = lambda s: s / peak if s < peak else max(0.0, (total_steps - s) / max(1, total_steps - peak))  # noqa: E731
    else:
        raise ValueError(f"unknown --schedule {kind!r}; choose cosine, cyclic, constant or auto")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def choose_precision(cfg: TrainConfig, ctx, device, run: RunDir) -> Precision:
    """A resumed run keeps its precision; a new one follows the hardware rule, rank 0's choice holding."""
    if run.loaded is not None:
        return precision_named(run.meta["precision"], device, "as when the run started")
    precision = resolve_precision(cfg.amp, device)
    if ctx.enabled:  # ranks on different hardware may decide differently
        chosen = dist_util.broadcast_from_main(ctx, precision.name)
        if chosen != precision.name:
            precision = precision_named(chosen, device, "rank 0's choice")
    return precision


def precision_named(name: str, device, why: str) -> Precision:
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    return Precision(dtype, device, f"{name} ({why})")


# --------------------------------------------------------------------------- one run
def _train(cfg: TrainConfig, run: RunDir, ctx, device, full_train, *, resume: bool, progress: bool, clock,
           callbacks) -> dict:
    seed_everything(cfg.seed)
    data = load_data(cfg, ctx, device, full_train)
    models = build_models(cfg, ctx, device, data.train)
    student, method = models.student, models.method
    epochs = method.epochs_for(cfg.epochs)
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kind = cfg.schedule if cfg.schedule != "auto" else method.default_schedule
    scheduler = make_schedule(kind, optimizer, epochs * len(data.loader) * method.replays)
    precision = choose_precision(cfg, ctx, device, run)
    check = RobustnessCheck(cfg, ctx, device)
    trainer = Trainer(method, optimizer, scheduler=scheduler, scaler=precision.scaler(), precision=precision,
                      student=student, ctx=ctx, device=device, clock=clock,
                      monitor=lambda model: check.heldout(model, data.monitor))
    state = TrainingState(run.out, student=student, optimizer=optimizer, scheduler=scheduler, scaler=trainer.scaler,
                          method=method, precision_name=precision.name, batches_per_epoch=len(data.loader),
                          teacher_sha256=(models.teacher_meta or {}).get("sha256"))
    trainer.write_state = state.save
    meta_base = {"config": dataclasses.asdict(cfg), "method": cfg.method,
                 "teacher": cfg.teacher if models.teacher_meta is None
                 else models.teacher_meta.get("config", {}).get("student", cfg.teacher)}
    launcher = f"torchrun --nproc_per_node={ctx.world_size} -m rrm_fast.train" if ctx.enabled else "python -m rrm_fast.train"
    stop = StopSignals(launcher, run.out)
    trainer.callbacks = run_callbacks(cfg, run, trainer, stop, meta_base, epochs, progress, callbacks)
    say(ctx, "[%s] %s on %s (%d train, %d held-out), %d epochs, device %s%s, %s, loader %s", cfg.method, cfg.student,
        cfg.dataset, len(data.train), len(data.monitor), epochs, device,
        f" x{ctx.world_size} processes" if ctx.enabled else "", precision.note,
        getattr(data.loader, "kind", cfg.loader))
    if run.loaded is not None:
        state.restore(run, trainer)
    if ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        if not (resume and (run.out / "config.json").exists()):
            atomic_write_json(run.out / "config.json", dataclasses.asdict(cfg))
    with stop.installed():
        try:
            trainer.fit(data.loader, epochs)
            report = final_report(cfg, run, trainer, check, models, meta_base, len(data.train), progress)
            trainer.emit("on_report", report)
        finally:
            trainer.emit("teardown")
    return report


def run_callbacks(cfg: TrainConfig, run: RunDir, trainer, stop, meta_base, epochs, progress, extra) -> list:
    """The loop's callbacks, in the order they must see each event (see callbacks.py)."""
    cbs = [FiniteWatch(trainer.device, trainer.precision.use_scaler, cfg.lr, cfg.amp), *extra]
    if progress:
        cbs.append(ProgressBar(cfg.method))
    cbs += [MetricsJSONL(run.out / "metrics.jsonl", resumed=run.loaded is not None),
            TensorBoardWriter(run.out, cfg.log_every), EpochSummary(run.out, meta_base, epochs)]
    policy = trainer.method.early_stop
    if policy is not None and cfg.eps > 0:
        cbs.append(EarlyStopOnRobustDrop(policy.drop, trainer.student, trainer.device))
    cbs.append(StateCheckpoint(cfg.checkpoint_every, stop))
    return cbs


def final_report(cfg: TrainConfig, run: RunDir, trainer, check: RobustnessCheck, models: Models, meta_base: dict,
                 train_len: int, progress: bool) -> dict:
    """final.safetensors, the test-split figures (never used for any choice above), report.json."""
    ctx, student, p = trainer.ctx, trainer.student, trainer.progress
    final = run.out / "final.safetensors"
    if ctx.is_main:
        final = save_model(final, student, {**meta_base, "epochs_run": p.epochs_done})
    test_ds = test_split(cfg, warn=ctx.is_main)
    dist_util.broadcast_buffers_(ctx, student)
    bars = progress and ctx.is_main and sys.stderr.isatty()
    ev = check.test(student, test_ds, progress=bars)
    standard = check.standard(student, test_ds, progress=bars)
    report = {"method": cfg.method, "student": cfg.student, "teacher": meta_base["teacher"], "dataset": cfg.dataset,
              "device": str(trainer.device), "precision": trainer.precision.name, "epochs_run": p.epochs_done,
              "train_seconds": p.train_seconds,
              "images_per_second": train_len * p.epochs_done * models.method.replays / max(p.train_seconds, 1e-9),
              "test": ev, "test_standard": standard, "checkpoint": str(final), "stopped_early": p.stopped_early,
              "teacher_report": (models.teacher_meta or {}).get("report_path"), "world_size": ctx.world_size}
    if ctx.is_main:
        atomic_write_json(run.out / "report.json", report)
    say(ctx, "[%s] test: clean %.2f%%  robust %.2f%% (%s; %d samples, eps %g); trained in %.1fs -> %s", cfg.method,
        100 * ev["clean_acc"], 100 * ev["robust_acc"], ev["attack"], ev["n"], cfg.eps, p.train_seconds, run.out)
    if standard is not None:
        say(ctx, "[%s] standard suite on the first %d test samples: robust %.2f%% (%s)", cfg.method, standard["n"],
            100 * standard["robust_acc"], standard["attack"])
    dist_util.barrier(ctx)
    return report
