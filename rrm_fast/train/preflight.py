"""The start-up checks that need the data or the models, run before a run writes anything.

train_run calls ``preflight`` after the configuration is validated (config.validate_config)
and the output directory is checked (state.open_run), with the train split loaded, and
before a teacher is trained or a file is written, so a run that fails here leaves nothing
behind and the same --out works on the next try. Errors: a method that cannot train on this
data (Method.data_conflict_with: RRM's per-image delta on folder data), an architecture whose feature map
shrinks to nothing at the dataset's resolution (the student, an architecture-named teacher,
--teacher-arch, a teacher checkpoint's own model), a teacher checkpoint for other inputs.
Warnings, for settings that run but are likely mistakes: eps beyond the pixel range, lr 0,
a --train-size above the dataset's, an architecture whose last feature maps are 1x1.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import read_meta
from ..methods import METHODS
from ..models import ARCHS
from ..models.fit import fit, fitting, smallest_side
from ..validation import eps_mistake
from .config import TrainConfig
from .teacher import uses_teacher

log = logging.getLogger("rrm_fast.train")


def preflight(cfg: TrainConfig, full_train, *, speak: bool = True) -> None:
    """Raise ValueError for a run that cannot work; log warnings (when ``speak``: rank 0) for likely mistakes."""
    c, h, w = full_train.image_shape
    if cfg.monitor_size >= len(full_train):
        raise ValueError(f"--monitor-size {cfg.monitor_size} must be less than {cfg.dataset}'s {len(full_train)} training "
                         "images (they are held out of training for the per-epoch check); lower it")
    method = METHODS[cfg.method]
    options = {**{k: o.default for k, o in method.options.items()}, **cfg.method_options}
    conflict = method.compile_conflict_with(options)
    if cfg.compile and conflict:
        raise ValueError(conflict)
    if cfg.augment != "auto" and getattr(full_train, "images", None) is None:
        raise ValueError(f"--augment {cfg.augment}: {cfg.dataset} is a folder dataset with its own random-resized crops "
                         "and flips; drop --augment (auto)")
    conflict = method.data_conflict_with(options, full_train, cfg.norm)
    if conflict:
        raise ValueError(conflict)
    for flag, arch in models_to_check(cfg):
        check_architecture(flag, arch, cfg.dataset, c, h, speak=speak)
    if uses_teacher(cfg):
        check_teacher_file(cfg, c, h)
    if speak:
        for line in likely_mistakes(cfg, len(full_train), (c, h, w)):
            log.warning(line)


def models_to_check(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(flag, architecture) of every model this run builds from an architecture name."""
    archs = [("--student", cfg.student)]
    if uses_teacher(cfg) and cfg.teacher in ARCHS:
        archs.append(("--teacher", cfg.teacher))
    if uses_teacher(cfg) and cfg.teacher_arch is not None:
        archs.append(("--teacher-arch", cfg.teacher_arch))
    return archs


def check_architecture(flag: str, arch: str, dataset: str, channels: int, side: int, *, speak: bool) -> None:
    result = fit(arch, channels, side)
    if result.ok:
        return
    others = [a for a in fitting(channels, side) if a != arch]
    fits = f"architectures that fit {side}x{side}: {', '.join(others)}" if others else "no architecture of the zoo fits"
    if result.error is not None:
        need = smallest_side(arch, channels)
        raise ValueError(f"{flag} {arch} cannot take {dataset}'s {side}x{side} images: its strides and pools shrink the "
                         f"feature map to nothing{f' (it needs about {need}x{need})' if need else ''}; {fits}")
    if speak:
        log.warning("%s %s on %s's %dx%d images: %d convolution(s) see a 1x1 feature map (their kernels read mostly "
                    "padding); %s", flag, arch, dataset, side, side, result.collapsed, fits)


def check_teacher_file(cfg: TrainConfig, channels: int, side: int) -> None:
    """An rrm_fast teacher checkpoint must be for this data's channels, and its model must run at this size."""
    if cfg.teacher is None or cfg.teacher in ARCHS or cfg.teacher_arch is not None:
        return
    path = Path(cfg.teacher)
    if not (path.suffix == ".safetensors" and path.is_file() and path.with_suffix(".json").is_file()):
        return  # loading it (teacher.load_teacher) names the problem
    spec = read_meta(path)["model"]  # CheckpointError for a sidecar that is not a model's
    if spec["in_channels"] != channels:
        raise ValueError(f"--teacher {path} takes {spec['in_channels']}-channel images but {cfg.dataset} has {channels}; "
                         "use a teacher trained on this dataset")
    result = fit(spec["arch"], channels, side, spec)
    if result.error is not None:
        raise ValueError(f"--teacher {path} ({spec['arch']} built for {spec.get('image_size', 28)}-pixel images) cannot "
                         f"take {cfg.dataset}'s {side}x{side} images ({result.error}); use a teacher trained at this size")


def likely_mistakes(cfg: TrainConfig, n_train: int, image_shape) -> list[str]:
    """Settings that run but probably are not what was meant, one line each."""
    lines = []
    eps = eps_mistake(cfg.eps, cfg.norm, image_shape)
    if eps:
        lines.append(eps)
    if cfg.lr == 0:
        lines.append("--lr 0: the weights never change; the run trains nothing")
    if cfg.train_size is not None and cfg.train_size + cfg.monitor_size > n_train:
        lines.append(f"--train-size {cfg.train_size} is more than {cfg.dataset}'s {n_train} training images less the "
                     f"{cfg.monitor_size} held out (--monitor-size): training on all {max(n_train - cfg.monitor_size, 0)}")
    return lines
