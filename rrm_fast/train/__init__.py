"""The trainer: one loop for every method.

    from rrm_fast.train import TrainConfig, train_run
    report = train_run(TrainConfig(method="pgd_at", student="cnn_small", epochs=3))

    python -m rrm_fast.train --help

Files, in the order data flows: config.py (TrainConfig, the single source of the flags,
config files and resume rules), teacher.py (build, cache and load the teacher), run.py
(train_run: data, models, precision, the final evaluation and the report), loop.py (the
Trainer: step and epoch), callbacks.py (checkpoints, finite-loss watch, stop signals, early
stopping, metrics.jsonl and TensorBoard, progress), state.py (the run directory and the
resume state), cli.py (the command line and the demo).
"""
from .callbacks import Callback, TrainingDiverged, TrainingInterrupted
from .cli import main
from .config import RESUME_MAY_CHANGE, TrainConfig, validate_config
from .loop import EpochSums, Progress, Trainer
from .run import make_schedule, train_run
from .teacher import cache_dir, config_hash

__all__ = ["Callback", "EpochSums", "Progress", "RESUME_MAY_CHANGE", "TrainConfig", "Trainer", "TrainingDiverged",
           "TrainingInterrupted", "cache_dir", "config_hash", "main", "make_schedule", "train_run", "validate_config"]
