"""Benchmark: loader throughput (images/s) and the starvation ratio of the demo's RRM step.

    python benchmarks/bench_loaders.py [--device cpu|cuda] [--out benchmarks/results/loaders_cpu.md]

Measured in one run, on one device:
  throughput   images/s each loader delivers (x float32 on the device, y int64), train mode, for
               - 28x28:  Fashion-MNIST train (60000 images; no augmentation, as trained),
               - 32x32:  a CIFAR-shaped array set (50000 random uint8 3x32x32 images, pad 4 + flip;
                         loader speed does not depend on pixel values, and CIFAR is not installed here),
               - JPEG 224x224: an ImageFolder of generated 500x375 JPEGs (ImageNet's typical size),
                 random-resized crop to 224 + flip. The device loader does not take folders.
               Ratios are against the torch DataLoader baseline of the same row.
  consumption  images/s the demo's RRM training step consumes with batches already staged on the
               device: student cnn_wide (+ projection to the teacher's width, head copied) forward/
               backward on clean x, teacher cnn_small features(x) without grad, feature loss,
               SGD step; Fashion-MNIST batch 128, channels_last (the demo's settings).
  starvation   median time of K training steps fed by a loader / median time of K steps fed from
               staged batches (interleaved, so drift hits both alike). 1.00 = never waits for data.
Timing: warm-up first, torch.cuda.synchronize before each clock read on CUDA, medians of repeats.
Acceptance (issue 5): device loader >= 5x consumption; starvation with --loader auto <= 1.05.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rrm_fast.bench.machine import describe_machine  # noqa: E402
from rrm_fast.bench.timing import sync  # noqa: E402
from rrm_fast.data import ArrayDataset, dali_available, load_dataset, make_loader  # noqa: E402
from rrm_fast.methods import METHODS  # noqa: E402
from rrm_fast.methods.base import ThreatModel  # noqa: E402
from rrm_fast.models import attach_projection, copy_head, create_model  # noqa: E402
from rrm_fast.train import Trainer  # noqa: E402

DEMO_BATCH = 128
JPEG_BATCH = 64


def describe_device(device: torch.device) -> str:
    info = describe_machine(device)
    return info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores, torch threads {info['torch_threads']}"


# ------------------------------------------------------------------------------------ datasets
def cifar_shaped(n: int = 50000) -> ArrayDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ArrayDataset("cifar_shaped_random", images, labels, 10, (0.5,) * 3, (0.25,) * 3, pad=4, flip=True)


def jpeg_folder(root: Path, n: int) -> Path:
    """n smooth 500x375 JPEGs (gradients + mild noise: compresses like a photo, unlike pure noise)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        folder = root / "train" / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([128 + 100 * np.sin(xx / (30 * a) + i), 128 + 100 * np.cos(yy / (25 * b)),
                        128 + 100 * np.sin((xx + yy) / (40 * c))], -1)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------------ throughput
def loader_rate(loader, device, images_per_trial: int, trials: int) -> float:
    """Median images/s over `trials` timed passes of about images_per_trial images each."""
    batches = max(1, min(len(loader), images_per_trial // loader.batch_size))
    it = iter(loader)  # warm-up: workers / pipeline started, first batches built
    for _ in range(min(3, len(loader))):
        next(it)
    del it
    rates = []
    for t in range(trials):
        loader.set_epoch(t + 1)
        sync(device)
        start = time.perf_counter()
        seen = 0
        for b, (x, y) in enumerate(loader):
            seen += y.numel()
            if b + 1 == batches:
                break
        sync(device)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


# ------------------------------------------------------------------------------------ RRM step
def build_rrm_step(ds: ArrayDataset, device: torch.device):
    c, h = ds.images.shape[1], ds.images.shape[2]
    teacher = create_model("cnn_small", ds.num_classes, c, ds.mean, ds.std, h).to(device).eval()
    student = create_model("cnn_wide", ds.num_classes, c, ds.mean, ds.std, h).to(device)
    attach_projection(student, teacher.feature_dim)
    copy_head(student, teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = student.to(memory_format=torch.channels_last)
    teacher = teacher.to(memory_format=torch.channels_last)
    method = METHODS["rrm"](student, teacher, ThreatModel("Linf", 0.1))
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)  # the trainer's optimizer
    return Trainer(method, opt).step  # the trainer's step, fp32


class Feed:
    """Endless batches from a loader, advancing the epoch when one ends (as the trainer does)."""

    def __init__(self, loader):
        self.loader, self.epoch, self.it = loader, 0, iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)


def timed_steps(step, source, k: int, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(k):
        x, y = source()
        step(x, y)
    sync(device)
    return time.perf_counter() - start


def starvation(step, loader, staged, device, k: int, repeats: int) -> tuple[float, float, float]:
    """(ratio, median loader-fed seconds per step, median staged seconds per step)."""
    feed = Feed(loader)
    for _ in range(2):  # warm-up both paths
        step(*feed.next())
        step(*staged[0])
    # Short alternating blocks: the shared machine's load drifts over minutes, and both paths
    # should see the same drift. Blocks (not single steps) so that an asynchronous loader
    # cannot prefetch its next batch for free while a staged step runs.
    fed, pre = [], []
    for r in range(repeats):
        cursor = iter(range(10**9))
        run_pre = lambda: pre.append(timed_steps(step, lambda: staged[next(cursor) % len(staged)], k, device))  # noqa: E731
        run_fed = lambda: fed.append(timed_steps(step, feed.next, k, device))  # noqa: E731
        for run in ((run_pre, run_fed) if r % 2 == 0 else (run_fed, run_pre)):  # ABBA: cancels linear drift
            run()
    med_fed, med_pre = statistics.median(fed) / k, statistics.median(pre) / k
    return med_fed / med_pre, med_fed, med_pre


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4, help="training steps per starvation block")
    ap.add_argument("--repeats", type=int, default=10, help="interleaved (staged, loader-fed) block pairs")
    ap.add_argument("--jpegs", type=int, default=192)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true", help="append this run to --out instead of replacing it")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kinds = ["device", "torch"] + (["dali"] if dali_available() else [])
    load_start = os.getloadavg()
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    fmnist = load_dataset("fashion_mnist", "train")
    cifar = cifar_shaped()
    emit("# Loader benchmark")
    emit()
    emit(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    emit(f"- device: {describe_device(device)}")
    emit(f"- torch {torch.__version__}; DALI {__import__('nvidia.dali').dali.__version__ if dali_available() else 'not installed'}")
    emit(f"- load average at start (1/5/15 min): {' '.join(f'{v:.2f}' for v in load_start)} "
         "(the machine is shared; a load above the core count means other jobs competed for the cores)")
    emit("- loader workers: torch DataLoader worker processes / DALI threads = cores - 1 (default)")
    emit()

    # -- throughput
    emit("## Throughput (train mode, images/s, median of trials; ratio vs the torch DataLoader baseline)")
    emit()
    emit("| data | batch | " + " | ".join(kinds) + " | " + " | ".join(f"{k}/torch" for k in kinds if k != "torch") + " |")
    emit("|---" * (2 + len(kinds) + len(kinds) - 1) + "|")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = load_dataset("imagefolder", "train", str(jpeg_folder(Path(tmp), args.jpegs)), resolution=224)
        rows = [("28x28 Fashion-MNIST (no aug)", fmnist, DEMO_BATCH, 20000),
                ("32x32 CIFAR-shaped (crop+flip)", cifar, DEMO_BATCH, 20000),
                ("JPEG 500x375 -> 224x224 (RRC+flip)", folder, JPEG_BATCH, args.jpegs)]
        for name, ds, bs, per_trial in rows:
            row = {}
            for kind in kinds:
                if kind == "device" and not isinstance(ds, ArrayDataset):
                    continue
                loader = make_loader(kind, ds, bs, train=True, device=device, seed=0, channels_last=True)
                # slow loaders get fewer images per trial so the whole benchmark stays a few minutes
                n = per_trial if kind == "device" else min(per_trial, 40 * bs)
                row[kind] = loader_rate(loader, device, n, args.trials)
                del loader
            rates[name] = row
            cells = [f"{row[k]:,.0f}" if k in row else "n/a" for k in kinds]
            ratios = [f"{row[k] / row['torch']:.2f}x" if k in row else "n/a" for k in kinds if k != "torch"]
            emit(f"| {name} | {bs} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    emit()

    # -- RRM step consumption and starvation
    step = build_rrm_step(fmnist, device)
    staged = [(x.clone(), y.clone()) for _, (x, y) in zip(range(8), make_loader(
        "device", fmnist, DEMO_BATCH, train=True, device=device, seed=1, channels_last=True))]
    emit(f"## Starvation: demo RRM step (student cnn_wide, teacher cnn_small, Fashion-MNIST, batch {DEMO_BATCH})")
    emit()
    emit("| loader | s/step fed by loader | s/step staged | starvation ratio |")
    emit("|---|---|---|---|")
    results = {}
    # On a CPU, auto is the device loader: measured once, as "auto (device)".
    for kind in ["auto"] + [k for k in kinds if not (k == "device" and device.type == "cpu")]:
        loader = make_loader(kind, fmnist, DEMO_BATCH, train=True, device=device, seed=0, channels_last=True)
        label = f"auto ({loader.kind})" if kind == "auto" else kind
        ratio, fed, pre = starvation(step, loader, staged, device, args.steps, args.repeats)
        results[kind] = (ratio, pre)
        emit(f"| {label} | {fed * 1e3:.1f} ms | {pre * 1e3:.1f} ms | {ratio:.3f} |")
        del loader
    emit()
    consumption = DEMO_BATCH / statistics.median(p for _, p in results.values())
    auto_kind = make_loader("auto", fmnist, DEMO_BATCH, train=True, device=device).kind
    auto_rate = rates["28x28 Fashion-MNIST (no aug)"][auto_kind]
    device_rate = rates["28x28 Fashion-MNIST (no aug)"]["device"]
    ok_rate = device_rate >= 5 * consumption
    ok_starve = results["auto"][0] <= 1.05
    emit("## Acceptance")
    emit()
    emit(f"- RRM step consumes {consumption:,.0f} images/s (staged batches); the device loader delivers "
         f"{device_rate:,.0f} images/s = {device_rate / consumption:.1f}x (needs >= 5x): {'PASS' if ok_rate else 'FAIL'}")
    emit(f"- starvation ratio with --loader auto: {results['auto'][0]:.3f} (needs <= 1.05): {'PASS' if ok_starve else 'FAIL'}")
    # The device loader runs in the training thread, so its cost adds to the step directly:
    # 1 + (loader seconds per batch) / (step seconds) bounds its starvation without the
    # step-to-step noise of a shared machine.
    emit(f"- loader-cost bound for auto ({auto_kind}): 1 + ({DEMO_BATCH} / {auto_rate:,.0f} img/s) / "
         f"{results['auto'][1] * 1e3:.1f} ms = {1 + DEMO_BATCH / auto_rate / results['auto'][1]:.4f}")
    emit(f"- load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        if args.append and args.out.exists():
            text = args.out.read_text() + "\n---\n\n" + text
        args.out.write_text(text)
    return 0 if ok_rate and ok_starve else 1


if __name__ == "__main__":
    sys.exit(main())
