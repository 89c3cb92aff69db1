"""Helpers shared by the test modules (imported as ``helpers``; test modules never import each other)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

from rrm_fast.train import Callback

REPO = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "images_per_second"}  # metrics.jsonl figures that depend on the clock, not the computation


def child_env(**extra) -> dict:
    """Environment for a child python: this checkout first on the path, one thread (CPU float
    results may depend on the thread count)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)


def flags(**values) -> list[str]:
    """``--key value`` pairs for the trainer's command line (``train_size`` -> ``--train-size``)."""
    argv = []
    for k, v in values.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


def metrics_rows(run_dir: Path, drop=TIMING) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def same_run(ref: Path, other: Path, why: str) -> None:
    """Two runs ended with the same weights, metrics (timing aside) and test figures, bit for bit."""
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "final.safetensors")), load_file(str(other / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{why}: weight {k} differs"
    assert metrics_rows(ref) == metrics_rows(other), why
    tests = [json.loads((d / "report.json").read_text())["test"] for d in (ref, other)]
    keys = ("n", "clean_acc", "robust_acc")
    assert {k: tests[0][k] for k in keys} == {k: tests[1][k] for k in keys}, why


class SimulatedCrash(Exception):
    pass


class CrashAtSave(Callback):
    """Raises SimulatedCrash at the n-th training-state write, before it commits or right after."""

    def __init__(self, n: int, before: bool):
        self.n, self.before, self.calls = n, before, 0

    def on_save_state(self, trainer):
        self.calls += 1
        if self.before and self.calls == self.n:
            raise SimulatedCrash

    def on_state_saved(self, trainer, path):
        if not self.before and self.calls == self.n:
            raise SimulatedCrash


class SignalAtStep(Callback):
    """Sends this process ``signum`` once, while minibatch ``step`` (1-based) ends: as if the
    user pressed Ctrl-C during it."""

    def __init__(self, step: int, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_batch_end(self, trainer, x, y, res):
        if trainer.progress.global_step == self.step:
            signal.raise_signal(self.signum)


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 8, seed: int = 0) -> Path:
    """A tiny ImageNet-style tree (train/ and val/), JPEG and PNG files of several sizes; each
    class has its own colour so a model can learn it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                base = np.zeros((h, w, 3), np.float64)
                base[..., c % 3] = 200
                pixels = (base + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return root
