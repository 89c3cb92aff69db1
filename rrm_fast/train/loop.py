"""The training loop: one step, one epoch, and the callbacks around them.

    trainer = Trainer(method, optimizer, scheduler=scheduler, callbacks=[...], clock=time.perf_counter)
    trainer.fit(loader, epochs)          # or trainer.step(x, y) for one minibatch (the benchmarks)

A step is ``method.replays`` times: the method's loss under the run's precision (given the
batch's sample indices when the method declares ``needs_sample_index``), backward
(the DDP wrapper, if any, all-reduces the weight gradients), ``method.after_backward()``,
the optimizer and scheduler steps. An epoch runs the loader's batches from where the run
stands (``Progress``), times itself with the injected clock (the time of training-state
writes excluded), then computes the epoch's figures and the held-out check. Checkpoints,
the finite-loss watch, stop signals, early stopping, metrics and progress bars are
callbacks (callbacks.py); the Trainer only says when.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import distributed as dist_util
from ..distributed import DistContext
from ..resume import preserved_rng
from ..runtime import Precision


@dataclass
class Progress:
    """Where a run stands; saved in every training state (the sidecar's top-level counters)."""
    epoch: int = 0                      # the epoch running (0-based)
    batch: int = 0                      # minibatches of it done
    global_step: int = 0                # minibatches done in the run
    epochs_done: int = 0
    train_seconds: float = 0.0          # finished epochs, by the run's clock
    epoch_seconds: float = 0.0          # the running epoch's time before its last training-state write
    stopped_early: str | None = None
    finished: bool = False              # no epoch left (the final evaluation may still be to do)

    def advance_epoch(self, epoch_time: float, epochs: int) -> None:
        self.epoch += 1
        self.batch = 0
        self.epochs_done += 1
        self.epoch_seconds = 0.0
        self.train_seconds += epoch_time
        self.finished = self.epoch >= epochs or self.stopped_early is not None


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

    def figures(self, ctx: DistContext) -> tuple[float, float, dict, int]:
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


class Trainer:
    """Runs steps and epochs; calls its callbacks (see callbacks.Callback for the hooks).

    ``student`` is the plain module (train mode, buffers, state dicts; default
    ``method.student``). ``monitor(student) -> dict`` gives the held-out figures of each epoch
    ("clean_acc", "robust_acc", "attack"); it runs without moving any training RNG stream.
    ``clock`` reads seconds (time.perf_counter, or a benchmark's CPU-time clock).
    ``write_state(trainer) -> path`` writes a training state (state.TrainingState.save)."""

    def __init__(self, method, optimizer, *, scheduler=None, scaler=None, precision: Precision | None = None,
                 student=None, ctx: DistContext | None = None, device=None, clock=time.perf_counter,
                 callbacks=(), monitor=None, write_state=None, progress: Progress | None = None):
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler
        self.student = method.student if student is None else student
        self.device = torch.device(device) if device is not None else next(self.student.parameters()).device
        self.precision = precision or Precision(None, self.device, "fp32")
        self.scaler = scaler if scaler is not None else self.precision.scaler()
        self.ctx = ctx or DistContext()
        self.clock = clock
        self.callbacks = list(callbacks)
        self.monitor, self.write_state = monitor, write_state
        self.progress = progress or Progress()
        self.sums = EpochSums()
        self.batches_per_epoch = 0
        self._t0 = 0.0

    # ------------------------------------------------------------------ the step
    def step(self, x, y, index=None):
        """One minibatch: ``method.replays`` optimizer steps. Returns the last StepOutput.
        ``index``: the batch's data.SampleIndex, for a method that declares ``needs_sample_index``."""
        kw = {} if index is None else {"index": index}
        for _ in range(self.method.replays):
            with self.precision.autocast():
                res = self.method.loss(x, y, **kw)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(res.loss).backward()
            self.method.after_backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            self.emit("on_train_step_end", res)
        return res

    # ------------------------------------------------------------------ the epoch
    def fit(self, loader, epochs: int) -> None:
        """Epochs from where ``progress`` stands until the last one or an early stop."""
        self.batches_per_epoch = len(loader)
        self.emit("on_fit_start")
        while not self.progress.finished and self.progress.epoch < epochs:
            self.run_epoch(loader, epochs)
        self.emit("on_fit_end")

    def run_epoch(self, loader, epochs: int) -> dict:
        p = self.progress
        epoch = p.epoch
        loader.set_epoch(epoch)
        loader.set_start_batch(p.batch)
        loader.set_yield_index(self.method.needs_sample_index)
        self.student.train()
        self.emit("on_epoch_start", epoch, epochs)
        self._t0 = self.clock()
        for x, y, *index in loader:  # (x, y, SampleIndex) when the method asked for indices
            res = self.step(x, y, *index)
            self.sums.add(res, y)
            p.batch += 1
            p.global_step += 1
            self.emit("on_batch_end", x, y, res)
        self.sync()
        epoch_time = p.epoch_seconds + self.clock() - self._t0
        self.emit("on_train_epoch_end")
        row = self.epoch_row(epoch, epoch_time)
        self.sums = EpochSums()
        p.advance_epoch(epoch_time, epochs)
        self.emit("on_epoch_end", row)
        return row

    def epoch_row(self, epoch: int, epoch_time: float) -> dict:
        """The epoch's metrics row: training figures over all ranks, then the held-out check."""
        loss_mean, train_acc, parts_mean, seen = self.sums.figures(self.ctx)
        dist_util.broadcast_buffers_(self.ctx, self.student)
        with preserved_rng(self.device):  # monitoring never moves the training RNG streams
            mon = self.monitor(self.student)
        return {"epoch": epoch + 1, "loss": loss_mean, **parts_mean, "train_acc": train_acc,
                "heldout_clean_acc": mon["clean_acc"], "heldout_robust_acc": mon["robust_acc"],
                "heldout_attack": mon["attack"], "epoch_seconds": epoch_time,
                "images_per_second": seen * self.method.replays / epoch_time,
                "lr": self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.optimizer.param_groups[0]["lr"]}

    # ------------------------------------------------------------------ training states
    def save_state(self, mid_epoch: bool = False):
        """Write a training state (all ranks take part). ``on_save_state`` runs first (the
        finite-loss watch: nothing is saved after a non-finite loss); mid-epoch, the write's
        time is left out of the epoch's time."""
        self.emit("on_save_state")
        if mid_epoch:
            self.sync()
            self.progress.epoch_seconds += self.clock() - self._t0
        path = self.write_state(self)
        if mid_epoch:
            self._t0 = self.clock()
        self.emit("on_state_saved", path)
        return path

    # ------------------------------------------------------------------ plumbing
    def emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
