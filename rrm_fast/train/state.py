"""A run's directory and the training state a resumed run continues from.

``open_run`` decides, before anything is built, where a run writes and what it continues:
the output directory must not hold another run (unless resuming it), a resumed run keeps
its saved settings (but those in config.RESUME_MAY_CHANGE) and its process count, and a
finished run just returns its report.

``TrainingState`` writes and restores everything a run needs to continue bit for bit: the
student, the optimizer (momentum buffers), scheduler and scaler, the Progress counters, and
per rank the RNG streams, the method's state (Free AT's delta) and the running epoch sums;
callbacks add their own part (early stopping's best weights). The file format is
rrm_fast.resume's (safetensors + a JSON sidecar, no pickles).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed as dist_util
from ..io import check_output_dir
from ..resume import capture_rng, join_tensors, load_latest_state, restore_rng, save_state, split_tensors
from .config import TrainConfig, changed_settings
from .loop import Progress

log = logging.getLogger("rrm_fast.train")


@dataclass
class RunDir:
    """Where a run writes, and the training state it continues from (None: from scratch)."""
    out: Path
    loaded: tuple | None = None         # (tensors, meta, sidecar path) of the newest good state
    report: dict | None = None          # set when the run is already complete

    @property
    def meta(self) -> dict:
        return self.loaded[1] if self.loaded else {}


def open_run(cfg: TrainConfig, ctx, *, resume: bool, exist_ok: bool) -> RunDir:
    """Check the output directory and find the state to continue, before any data is loaded."""
    out = Path(dist_util.broadcast_from_main(
        ctx, cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}-{cfg.student}"))
    check_out(out, resume=resume, exist_ok=exist_ok)
    if resume:
        check_resume_config(out, cfg)
    loaded = load_latest_state(out, log.warning) if resume else None
    dist_util.barrier(ctx)  # every rank has looked at OUT before rank 0 writes to it
    run = RunDir(out, loaded)
    if loaded is not None:
        meta = run.meta
        if meta["world_size"] != ctx.world_size:
            raise ValueError(f"{out} was trained by {meta['world_size']} process(es); resume it with the same number "
                             f"(torchrun --nproc_per_node={meta['world_size']}), not {ctx.world_size}")
        if meta.get("finished") and (out / "report.json").exists():
            if ctx.is_main:
                log.info("%s: the run is already complete; its report is %s", out, out / "report.json")
            run.report = json.loads((out / "report.json").read_text())
    return run


# every name a run writes in its directory (callbacks.py, run.py, resume.py); TensorBoard adds events.out.tfevents.*
RUN_FILES = ("config.json", "metrics.jsonl", "report.json", "final.safetensors", "final.json", "last.safetensors",
             "last.json", "state")


def check_out(out: Path, *, resume: bool, exist_ok: bool) -> None:
    """--out is a directory this run may create or write in, and - unless the run continues
    there (--resume) or the caller owns it (exist_ok) - holds no file the run would write."""
    check_output_dir(out, "--out")
    if resume or exist_ok or not out.is_dir():
        return
    if (out / "config.json").exists():
        raise ValueError(f"output directory {out} already holds a run (config.json); choose another --out, delete it, "
                         f"or continue it with --resume {out}")
    found = [name for name in RUN_FILES if (out / name).exists()] + sorted(p.name for p in out.glob("events.out.tfevents.*"))
    if found:
        raise ValueError(f"output directory {out} already holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''}, "
                         "which this run would overwrite; choose another --out or move them away")


def check_resume_config(out: Path, cfg: TrainConfig) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is unreadable; the run cannot be resumed - start a new one with another --out") from None
    diff = changed_settings(saved, cfg)
    if diff:
        k, now = diff[0], dataclasses.asdict(cfg)
        raise ValueError(f"{out} was started with {k}={saved[k]!r}, not {now[k]!r}; a resumed run keeps its own settings "
                         f"(differing: {', '.join(diff)}) - start a new run with another --out to change them")


class TrainingState:
    """Writes (``save``, the Trainer's ``write_state``) and restores a run's training state."""

    def __init__(self, out: Path, *, student, optimizer, scheduler, scaler, method, precision_name: str,
                 teacher_sha256: str | None, batches_per_epoch: int):
        self.out, self.student, self.optimizer = out, student, optimizer
        self.scheduler, self.scaler, self.method = scheduler, scaler, method
        self.fixed = {"batches_per_epoch": batches_per_epoch, "precision": precision_name,
                      "teacher_sha256": teacher_sha256}

    def save(self, trainer) -> Path | None:
        """All ranks take part; rank 0 writes. Per-rank parts: RNG streams, method state, epoch sums."""
        ctx, device = trainer.ctx, trainer.device
        rank_tensors: dict = {}
        prefix = f"rank{ctx.rank}"
        rank_meta = {"rng": capture_rng(device, f"{prefix}/rng", rank_tensors),
                     "method": split_tensors(self.method.state_dict(), f"{prefix}/method", rank_tensors),
                     "sums": split_tensors(trainer.sums.state(), f"{prefix}/sums", rank_tensors)
                     if trainer.sums.steps else None}
        gathered = dist_util.gather_to_main(ctx, (rank_meta, {k: v.cpu() for k, v in rank_tensors.items()}))
        if not ctx.is_main:
            return None
        tensors = {f"model/{k}": v for k, v in self.student.state_dict().items()}
        meta = dataclasses.asdict(trainer.progress)
        for cb in trainer.callbacks:
            cb.save_into(meta, tensors)
        meta.update(self.fixed, world_size=ctx.world_size,
                    optimizer=split_tensors(self.optimizer.state_dict(), "optimizer", tensors),
                    scheduler=split_tensors(self.scheduler.state_dict(), "scheduler", tensors),
                    scaler=split_tensors(self.scaler.state_dict(), "scaler", tensors),
                    ranks=[g[0] for g in gathered])
        for _, t in gathered:
            tensors.update(t)
        return save_state(self.out, trainer.progress.global_step, tensors, meta)

    def check(self, run: RunDir) -> None:
        """A state of another teacher or another data layout cannot be continued."""
        meta = run.meta
        if meta.get("teacher_sha256") != self.fixed["teacher_sha256"]:
            raise ValueError(f"the teacher checkpoint changed since {run.out} started (sha256 differs); resume needs the "
                             "same teacher - start a new run with another --out")
        if meta["batches_per_epoch"] != self.fixed["batches_per_epoch"]:
            raise ValueError(f"{run.out}: the data gives {self.fixed['batches_per_epoch']} batches per epoch but the run "
                             f"had {meta['batches_per_epoch']}; resume with the same data and settings")

    def restore(self, run: RunDir, trainer) -> None:
        """Everything ``save`` wrote, into the run's objects; the RNG streams last."""
        tensors, meta, path = run.loaded
        ctx, device = trainer.ctx, trainer.device
        self.check(run)
        self.student.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        self.optimizer.load_state_dict(join_tensors(meta["optimizer"], tensors))
        for p in self.student.parameters():  # the file stores momentum buffers contiguous: give back their parameter's layout
            for k, v in self.optimizer.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    self.optimizer.state[p][k] = torch.empty_like(p).copy_(v)
        self.scheduler.load_state_dict(meta["scheduler"])
        if meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        for cb in trainer.callbacks:
            cb.load_from(meta, tensors, device)
        trainer.progress = Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress)})
        rank_meta = meta["ranks"][ctx.rank]
        self.method.load_state_dict(join_tensors(rank_meta["method"], tensors, device))
        if rank_meta["sums"] is not None:
            trainer.sums.load(join_tensors(rank_meta["sums"], tensors, device))
        restore_rng(rank_meta["rng"], device, f"rank{ctx.rank}/rng", tensors)
        if ctx.is_main:
            p = trainer.progress
            log.info("resume: continuing %s from %s (epoch %d, batch %d, step %d)", run.out, path.name, p.epoch + 1,
                     p.batch, p.global_step)
