"""The teacher: a checkpoint, a file from elsewhere, or an architecture trained once and cached.

``--teacher ARCH`` names an architecture to train with ``--teacher-method`` for
``--teacher-epochs``. That training is a run of its own (``teacher_run_config``), cached
under $RRM_FAST_CACHE/teachers/<hash of its settings>, so later runs reuse it and an
interrupted one continues from its own training state. train_run runs it to completion
BEFORE the student's run builds anything, then the student loads it like any checkpoint
(``load_teacher``): the loop is never entered from inside another run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from ..checkpoint import fit_state_dict, head_classes, load_model, read_state_dict
from ..io import sha256_file
from ..methods import METHODS
from ..models import ARCHS, create_model
from .config import TrainConfig

log = logging.getLogger("rrm_fast.train")

# The settings a cached teacher is keyed by (bookkeeping such as --out or --checkpoint-every is not).
TEACHER_KEYS = ("method", "student", "dataset", "data_dir", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                "schedule", "eps", "norm", "alpha", "attack_steps", "seed", "train_size", "monitor_size",
                "method_options", "amp", "channels_last", "resolution", "augment")


def cache_dir() -> Path:
    return Path(os.environ.get("RRM_FAST_CACHE", Path.home() / ".cache" / "rrm_fast"))


def config_hash(cfg: TrainConfig, keys=TEACHER_KEYS) -> str:
    values = {k: getattr(cfg, k) for k in keys}
    if values.get("resolution") is None:
        values.pop("resolution", None)  # added later: keys of teachers cached before it stay valid
    if values.get("augment") == "auto":
        values.pop("augment", None)  # likewise
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def uses_teacher(cfg: TrainConfig) -> bool:
    """A method without a teacher never pays for loading or training one (unless its head is copied from it)."""
    return cfg.teacher is not None and (METHODS[cfg.method].needs_teacher or cfg.head_init == "teacher")


def teacher_run_config(cfg: TrainConfig) -> TrainConfig | None:
    """The run that trains an architecture-named teacher (its ``out`` is its cache folder), or None."""
    if cfg.teacher not in ARCHS:
        return None
    # options both methods declare reach the teacher too (crt + gaussian_aug share --sigma)
    t_opts = METHODS[cfg.teacher_method].options if cfg.teacher_method in METHODS else {}
    tcfg = dataclasses.replace(cfg, method=cfg.teacher_method, student=cfg.teacher, epochs=cfg.teacher_epochs,
                               teacher=None, teacher_arch=None, head_init="random", out=None,
                               method_options={k: v for k, v in cfg.method_options.items() if k in t_opts})
    tcfg.out = str(cache_dir() / "teachers" / config_hash(tcfg))
    return tcfg


def is_trained(tcfg: TrainConfig) -> bool:
    out = Path(tcfg.out)
    return (out / "final.safetensors").exists() and (out / "report.json").exists()


def teacher_checkpoint(cfg: TrainConfig) -> tuple[str | None, str | None]:
    """(checkpoint path, path of its report when trained by rrm_fast here) of the run's teacher."""
    tcfg = teacher_run_config(cfg)
    if tcfg is None:
        return cfg.teacher, None
    out = Path(tcfg.out)
    return str(out / "final.safetensors"), str(out / "report.json")


def load_teacher(cfg: TrainConfig, ds, device):
    """The frozen teacher (eval mode, no gradients) and its metadata; None when the run has none."""
    path, report_path = teacher_checkpoint(cfg)
    if path is None:
        return None, None
    if cfg.teacher_arch is not None:
        teacher, meta = load_external_teacher(path, cfg.teacher_arch, ds, device)
    else:
        p = Path(path)
        if p.exists() and not p.with_suffix(".json").exists():
            raise ValueError(f"--teacher {path} is not an rrm_fast checkpoint (no {p.with_suffix('.json').name} sidecar); "
                             "to use weights from elsewhere name their architecture with --teacher-arch ARCH")
        teacher, meta = load_model(path, device)
    meta["report_path"] = report_path
    for q in teacher.parameters():
        q.requires_grad_(False)
    if teacher.num_classes != ds.num_classes:
        raise ValueError(f"teacher {path} predicts {teacher.num_classes} classes but {cfg.dataset} has {ds.num_classes}; "
                         "use a teacher trained on the same label set")
    return teacher.eval(), meta


def load_external_teacher(path: str, arch: str, ds, device):
    """A teacher from elsewhere (RobustBench, timm, torchvision, the robustness library...):
    ``arch`` built for the dataset's input shape, with the file's weights mapped onto it."""
    state = read_state_dict(path)
    # built with the file's class count, so a mismatch is reported as one, not as a shape error
    classes = head_classes(state) or ds.num_classes
    c, h, _ = ds.image_shape
    model = create_model(arch, classes, c, ds.mean, ds.std, h)
    fit_state_dict(model, state, path)
    meta = {"config": {"student": arch, "method": "external"}, "sha256": sha256_file(path), "path": str(path)}
    return model.to(device), meta
