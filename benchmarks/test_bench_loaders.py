"""pytest-benchmark: one epoch of each loader, and the device-loader-vs-RRM-step gate.

    pytest benchmarks/test_bench_loaders.py --benchmark-only

Timings only; the full table (28x28, 32x32, JPEG 224, starvation ratios) comes from
benchmarks/bench_loaders.py, with results in benchmarks/results/loaders_cpu.md.
One gate, from issue 5: the device loader delivers >= 5x the images/s the demo's RRM
training step consumes (measured interleaved in the same test, on the same device).
"""
from __future__ import annotations

import statistics

import pytest
import torch

from bench_loaders import DEMO_BATCH, build_rrm_step, cifar_shaped
from rrm_fast.bench.timing import sync, time_once
from rrm_fast.data import dali_available, load_dataset, make_loader

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KINDS = ["device", "torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]
SUBSET = 8192  # images per timed epoch: a few seconds for the slowest loader on 2 CPU cores


@pytest.fixture(scope="module")
def fmnist():
    try:
        ds = load_dataset("fashion_mnist", "train")
    except ValueError as exc:
        pytest.skip(str(exc))
    return ds.subset(torch.arange(SUBSET))


def _epoch(loader, epoch_counter):
    def run():
        epoch_counter[0] += 1
        loader.set_epoch(epoch_counter[0])
        n = 0
        for _, y in loader:
            n += y.numel()
        sync(DEVICE)
        return n
    return run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("data", ["fmnist_28", "cifar_shaped_32"])
def test_loader_epoch(benchmark, fmnist, kind, data):
    ds = fmnist if data == "fmnist_28" else cifar_shaped(SUBSET)
    loader = make_loader(kind, ds, DEMO_BATCH, train=True, device=DEVICE, seed=0, channels_last=True)
    run = _epoch(loader, [0])
    benchmark.group = f"loader epoch {data} ({SUBSET} images, batch {DEMO_BATCH}) {DEVICE.type}"
    benchmark.extra_info.update(device=DEVICE.type, images=SUBSET)
    assert benchmark.pedantic(run, warmup_rounds=1, rounds=3 if kind != "device" else 10) == SUBSET


def test_device_loader_outpaces_rrm_step(benchmark, fmnist):
    step = build_rrm_step(fmnist, DEVICE)
    loader = make_loader("device", fmnist, DEMO_BATCH, train=True, device=DEVICE, seed=0, channels_last=True)
    batches = [(x.clone(), y.clone()) for _, (x, y) in zip(range(2), loader)]
    step(*batches[0])  # warm-up
    load_s, step_s = [], []
    for r in range(5):  # interleaved: a loader epoch, then two training steps (synchronised wall time)
        loader.set_epoch(r)
        load_s.append(time_once(lambda: [None for _ in loader], DEVICE) / SUBSET)
        step_s.append(time_once(lambda: [step(x, y) for x, y in batches], DEVICE) / (len(batches) * DEMO_BATCH))
    ratio = statistics.median(step_s) / statistics.median(load_s)
    benchmark.extra_info.update(device=DEVICE.type, loader_images_per_s=1 / statistics.median(load_s),
                                step_images_per_s=1 / statistics.median(step_s), ratio=ratio)
    benchmark.pedantic(lambda: step(*batches[0]), rounds=2)
    assert ratio >= 5, f"device loader delivers only {ratio:.1f}x the images/s the RRM step consumes (needs >= 5x)"
