"""What happens around the training loop, one callback each: the finite-loss watch, stop
signals and training-state checkpoints, early stopping, the metrics writers (metrics.jsonl,
TensorBoard), the per-epoch log line, the last weights, and the progress bar.

The Trainer calls every hook of every callback, in list order (see ``Callback``). A run's
list is built by run.py: the watch first (it must see every loss before anything is saved),
then the caller's callbacks (``train_run(cfg, callbacks=[...])``: tests inject faults here),
the writers, early stopping, and the checkpoint last (it saves what the others left).
"""
from __future__ import annotations

import copy
import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import distributed as dist_util
from ..checkpoint import save_model
from ..errors import Interrupted
from ..resume import MetricsLog

log = logging.getLogger("rrm_fast.train")


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM stopped the run after it saved a training state."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (the run's weights are no longer usable)."""


class Callback:
    """Hooks, each called with the Trainer first; every one is optional."""

    def on_fit_start(self, trainer): ...
    def on_epoch_start(self, trainer, epoch: int, epochs: int): ...
    def on_train_step_end(self, trainer, res): ...          # after each optimizer step (Free AT: each replay)
    def on_batch_end(self, trainer, x, y, res): ...         # after each minibatch; progress counts it
    def on_train_epoch_end(self, trainer): ...              # after an epoch's last batch, before its figures
    def on_epoch_end(self, trainer, row: dict): ...         # after the figures; progress already advanced
    def on_save_state(self, trainer): ...                   # before a training state is written
    def on_state_saved(self, trainer, path): ...
    def on_fit_end(self, trainer): ...                      # training over (or nothing left to train)
    def on_report(self, trainer, report: dict): ...         # the final test figures
    def teardown(self, trainer): ...                        # always, last (files closed)
    def save_into(self, meta: dict, tensors: dict): ...     # own part of a training state
    def load_from(self, meta: dict, tensors: dict, device): ...


def main_only(trainer) -> bool:
    return trainer.ctx.is_main


class FiniteWatch(Callback):
    """Finds the first non-finite loss without a host sync per step: flags accumulate on the
    device and are read before every training-state write and at each epoch end.

    Without a GradScaler the first NaN/inf loss is an error. With one (fp16 on CUDA), a
    non-finite loss makes the scaler skip that step, as with any fp16 overflow, and is an
    error only when every step since the previous check was non-finite."""

    def __init__(self, device, tolerate_skips: bool, lr: float, amp: bool):
        self.tolerate_skips, self.lr, self.amp = tolerate_skips, lr, amp
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self.last_good = torch.full((), float("nan"), dtype=torch.float32, device=device)
        self.bad_count = torch.zeros((), dtype=torch.int64, device=device)
        self.observed = 0

    def on_train_step_end(self, trainer, res):
        loss = res.loss.detach().float()
        step = trainer.progress.global_step
        finite = torch.isfinite(loss)
        clean = self.first_bad < 0
        self.last_good = torch.where(finite & clean, loss, self.last_good)
        newly_bad = ~finite & clean
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_count += ~finite
        self.observed += 1

    def on_save_state(self, trainer):
        self.check(trainer)

    def on_train_epoch_end(self, trainer):
        self.check(trainer)

    def check(self, trainer) -> None:
        if self.observed == 0:
            return
        bad_count, first_bad = int(self.bad_count), int(self.first_bad)
        failed = first_bad >= 0 and (not self.tolerate_skips or bad_count >= self.observed)
        if dist_util.any_rank(trainer.ctx, failed):
            first_bad = dist_util.min_over_ranks(trainer.ctx, first_bad if first_bad >= 0 else 2**62)
            epoch, batch = divmod(first_bad, trainer.batches_per_epoch)
            value = float(self.bad_value) if int(self.first_bad) == first_bad else "nan"
            raise TrainingDiverged(
                f"training diverged: the loss became {value} at step {first_bad + 1} (epoch {epoch + 1}, batch "
                f"{batch + 1}); the last finite loss was {float(self.last_good):.6g}; nothing was saved after it - "
                f"lower --lr (now {self.lr:g}){', or drop --amp' if self.amp else ''}, or check the data")
        self.bad_count.zero_()
        self.first_bad.fill_(-1)
        self.observed = 0


class StopSignals:
    """SIGINT / SIGTERM: remember the signal and let the loop save a training state at the
    next step boundary, then stop. A second signal, or one arriving once training is over
    (the state is already saved), stops at once."""

    def __init__(self, launcher: str, out: Path):
        self.signum: int | None = None
        self.immediate = False
        self.launcher, self.out = launcher, out
        self._previous: dict = {}

    @contextmanager
    def installed(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.immediate or self.signum is not None:
            raise TrainingInterrupted(signum, f"interrupted by {signal.Signals(signum).name}; the last training state in "
                                              f"{self.out / 'state'} is kept; continue with: {self.launcher} --resume {self.out}")
        self.signum = signum

    def requested(self, ctx) -> bool:
        """Whether any rank got a signal (a collective under torchrun: every rank calls it alike)."""
        if not ctx.enabled:
            return self.signum is not None
        signum = dist_util.min_over_ranks(ctx, self.signum or 1_000)
        if signum != 1_000 and self.signum is None:
            self.signum = signum
        return signum != 1_000

    def interrupted(self, where: str) -> TrainingInterrupted:
        signum = self.signum or signal.SIGTERM
        return TrainingInterrupted(signum, f"interrupted by {signal.Signals(signum).name} at {where}; training state "
                                           f"saved; continue with: {self.launcher} --resume {self.out}")


class StateCheckpoint(Callback):
    """Training states every ``every`` minibatches and at each epoch end; at those boundaries
    a stop signal saves and stops. Once training is over, a signal stops at once (the state
    is saved; --resume redoes only the final evaluation)."""

    def __init__(self, every: int, stop: StopSignals):
        self.every, self.stop = every, stop

    def on_batch_end(self, trainer, x, y, res):
        p = trainer.progress
        if p.batch >= trainer.batches_per_epoch:
            return  # the epoch end saves its own state
        halt = self.stop.requested(trainer.ctx)
        if halt or p.global_step % self.every == 0:
            trainer.save_state(mid_epoch=True)
            if halt:
                raise self.stop.interrupted(f"epoch {p.epoch + 1}, batch {p.batch} (step {p.global_step})")

    def on_epoch_end(self, trainer, row):
        trainer.save_state()
        p = trainer.progress
        if not p.finished and self.stop.requested(trainer.ctx):
            raise self.stop.interrupted(f"the end of epoch {p.epoch} (step {p.global_step})")

    def on_fit_end(self, trainer):
        if self.stop.requested(trainer.ctx):
            raise self.stop.interrupted("the end of training")
        self.stop.immediate = True


class EarlyStopOnRobustDrop(Callback):
    """A method's RobustDropStop: keep the weights of the best held-out robust accuracy; when
    it falls more than ``drop`` below that best, restore them and stop."""

    def __init__(self, drop: float, student, device):
        self.drop, self.student, self.device = drop, student, device
        self.best_robust, self.best_state = -1.0, None

    def on_epoch_end(self, trainer, row):
        robust = row["heldout_robust_acc"]
        if robust > self.best_robust:
            self.best_robust, self.best_state = robust, copy.deepcopy(self.student.state_dict())
        elif robust < self.best_robust - self.drop:
            p = trainer.progress
            p.stopped_early = (f"catastrophic overfitting: held-out PGD accuracy fell from {self.best_robust:.3f} to "
                               f"{robust:.3f}; restored the best epoch's weights and stopped")
            p.finished = True
            if main_only(trainer):
                log.info("  %s", p.stopped_early)
            self.student.load_state_dict(self.best_state)

    def save_into(self, meta, tensors):
        meta["best_robust"] = self.best_robust
        if self.best_state is not None:
            tensors.update({f"best/{k}": v for k, v in self.best_state.items()})

    def load_from(self, meta, tensors, device):
        self.best_robust = meta.get("best_robust", -1.0)
        best = {k[len("best/"):]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        self.best_state = best or None


class MetricsJSONL(Callback):
    """metrics.jsonl: one row per epoch (rank 0). A resumed run first drops the rows of epochs
    its training state had not finished."""

    def __init__(self, path: Path, resumed: bool):
        self.log, self.resumed = MetricsLog(path), resumed

    def on_fit_start(self, trainer):
        if main_only(trainer):
            if self.resumed:
                self.log.truncate(trainer.progress.epochs_done)
            else:
                self.log.reset()

    def on_epoch_end(self, trainer, row):
        if main_only(trainer):
            self.log.append(row)


class TensorBoardWriter(Callback):
    """TensorBoard events beside metrics.jsonl (rank 0): every ``every`` minibatches the step's
    loss and loss parts, the learning rate and images/s since the previous point; at each
    epoch end the epoch's figures (x axis: minibatches done). A resumed run purges the events
    logged after its training state, so curves never hold a step twice."""

    def __init__(self, log_dir: Path, every: int):
        self.log_dir, self.every = log_dir, every
        self.writer = None
        self._last = (0, 0.0)  # (images, clock) at the previous per-step point

    def on_fit_start(self, trainer):
        if not main_only(trainer):
            return
        from torch.utils.tensorboard import SummaryWriter
        step = trainer.progress.global_step
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step if step > 0 else None)

    def on_epoch_start(self, trainer, epoch, epochs):
        self._last = (self._images(trainer), trainer.clock())

    @staticmethod
    def _images(trainer) -> int:
        """Training images (times replays) of the running epoch over all ranks."""
        return trainer.sums.seen * trainer.method.replays * trainer.ctx.world_size

    def on_batch_end(self, trainer, x, y, res):
        step = trainer.progress.global_step
        if self.writer is None or step % self.every:
            return
        images = self._images(trainer)
        now = trainer.clock()
        scalars = {"step/loss": float(res.loss.detach()), **{f"step/{k}": float(v) for k, v in res.parts.items()},
                   "step/lr": trainer.optimizer.param_groups[0]["lr"]}
        if now > self._last[1]:
            scalars["step/images_per_second"] = (images - self._last[0]) / (now - self._last[1])
        self._last = (images, now)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def on_epoch_end(self, trainer, row):
        if self.writer is None:
            return
        step = trainer.progress.global_step
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def on_report(self, trainer, report):
        if self.writer is not None:
            for key in ("clean_acc", "robust_acc"):
                self.writer.add_scalar(f"test/{key}", report["test"][key], trainer.progress.global_step)

    def teardown(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EpochSummary(Callback):
    """The per-epoch log line, and last.safetensors (rank 0)."""

    def __init__(self, out: Path, meta: dict, epochs: int):
        self.out, self.meta, self.epochs = out, meta, epochs

    def on_epoch_end(self, trainer, row):
        if not main_only(trainer):
            return
        save_model(self.out / "last.safetensors", trainer.student, {**self.meta, "epoch": row["epoch"]})
        log.info("  epoch %d/%d: loss %.4f  train acc %.3f  held-out clean %.3f %s %.3f  %.1fs (%.0f img/s)",
                 row["epoch"], self.epochs, row["loss"], row["train_acc"], row["heldout_clean_acc"],
                 row["heldout_attack"], row["heldout_robust_acc"], row["epoch_seconds"], row["images_per_second"])


class ProgressBar(Callback):
    """A tqdm bar per epoch (rank 0, interactive terminals), with the loss and accuracy every 20 batches."""

    def __init__(self, name: str):
        self.name, self.bar = name, None

    def on_epoch_start(self, trainer, epoch, epochs):
        from tqdm import tqdm
        self.bar = tqdm(desc=f"{self.name} epoch {epoch + 1}/{epochs}", total=trainer.batches_per_epoch,
                        initial=trainer.progress.batch, leave=False, dynamic_ncols=True, mininterval=1.0,
                        disable=None if main_only(trainer) else True)

    def on_batch_end(self, trainer, x, y, res):
        self.bar.update(1)
        if trainer.progress.batch % 20 == 0:
            self.bar.set_postfix(loss=f"{res.loss.item():.3f}", acc=f"{(res.logits.argmax(1) == y).float().mean().item():.3f}")

    def on_train_epoch_end(self, trainer):
        self.teardown(trainer)

    def teardown(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
