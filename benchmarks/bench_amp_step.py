"""Benchmark: one ResNet-18 training step at CIFAR shape, channels_last + bf16 autocast vs fp32.

    python benchmarks/bench_amp_step.py [--device cuda] [--batch-size 128] [--no-compile]
        [--out results.md] [--json results.json]

One step is what the trainer does per minibatch: forward, cross-entropy, backward, SGD
(momentum 0.9, weight decay 5e-4). Variants, each with its own copy of one initialisation,
timed round-robin in one run (rrm_fast.bench.timing):

  fp32             NCHW, float32
  cl_bf16          channels_last weights and inputs, forward under torch.autocast(bfloat16)
                   (what ``--amp`` with the default ``--channels-last`` runs on a GPU)
  fp32_compiled    torch.compile(model) of fp32
  cl_bf16_compiled torch.compile(model) of cl_bf16

Reported: median ms per step and images/s, the speed-up of cl_bf16 over fp32 (eager, and under
torch.compile), and of each compiled variant over its eager twin. Inputs are seeded uniform
images of CIFAR's shape (3x32x32) with random labels: a dense convnet's step does the same
work on any pixel values, and a bare GPU machine has no CIFAR copy.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device_timing import batched, calls_per_sample, median_per_call, write_results  # noqa: E402
from rrm_fast.bench.machine import LoadSampler, describe_load, describe_machine  # noqa: E402
from rrm_fast.models import create_model  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
VARIANTS = ("fp32", "cl_bf16", "fp32_compiled", "cl_bf16_compiled")


def make_step(model: torch.nn.Module, device: torch.device, amp: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def build(device: torch.device, batch_size: int, variants, compile_backend: str, arch: str = "resnet18", seed: int = 0):
    """{variant: zero-argument step}, each variant on its own copy of one initialisation."""
    torch.manual_seed(seed)
    base = create_model(arch, 10, 3, CIFAR_MEAN, CIFAR_STD, 32).to(device).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    calls = {}
    for name in variants:
        channels_last = name.startswith("cl_")
        model = copy.deepcopy(base).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if name.endswith("_compiled"):
            model = torch.compile(model, backend=compile_backend)
        step = make_step(model, device, amp=channels_last)
        inputs = x_cl if channels_last else x
        calls[name] = (lambda s, i: lambda: s(i, y))(step, inputs)
    return calls


def ratios(med: dict) -> dict:
    out = {}
    if "cl_bf16" in med:
        out["cl_bf16_vs_fp32_eager"] = med["fp32"] / med["cl_bf16"]
    if "cl_bf16_compiled" in med:
        out["cl_bf16_vs_fp32_compiled"] = med["fp32_compiled"] / med["cl_bf16_compiled"]
        out["cl_bf16_compiled_vs_eager"] = med["cl_bf16"] / med["cl_bf16_compiled"]
    if "fp32_compiled" in med:
        out["fp32_compiled_vs_eager"] = med["fp32"] / med["fp32_compiled"]
    return out


def markdown(res: dict) -> str:
    med, b = res["median_s"], res["batch_size"]
    lines = [f"# {res['arch']} training step at CIFAR shape: channels_last + bf16 autocast vs fp32", "",
             f"- device: {res['machine']['summary']}; {describe_load(res['load'])}",
             f"- date {res['date']}; batch {b} of 3x32x32; forward + CE + backward + SGD (momentum 0.9, wd 5e-4); "
             f"{res['reps']} round-robin samples after warm-up (compiles outside the timing); "
             f"torch.compile backend {res['compile_backend']}; whole run {res['seconds']:.0f} s", "",
             "| variant | median ms / step | images / s | x fp32 (eager) |", "|---|---:|---:|---:|"]
    for name, s in med.items():
        lines.append(f"| {name} | {s * 1e3:.2f} | {b / s:.0f} | {med['fp32'] / s:.2f} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arch", default="resnet18", help="model (a smaller one only to rehearse the script quickly)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--json", type=Path, help="also write the medians, ratios, machine and load here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda given but torch sees no GPU; run with --device cpu")
    if args.batch_size < 1 or args.reps < 1:
        p.error("--batch-size and --reps must be >= 1")
    variants = VARIANTS[:2] if args.no_compile else VARIANTS
    t0 = time.perf_counter()
    calls = build(device, args.batch_size, variants, args.compile_backend, args.arch)
    for name, call in calls.items():  # compile and let cuDNN pick its algorithms outside the timing
        for _ in range(3):
            call()
        print(f"warmed up {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    n = {name: calls_per_sample(call, device, 5e-3 if device.type == "cuda" else 0.0) for name, call in calls.items()}
    with LoadSampler(interval=5.0) as load:
        med = median_per_call({k: batched(c, n[k]) for k, c in calls.items()}, n, device, args.reps)
    res = {"machine": describe_machine(device), "load": load.stats(), "date": datetime.date.today().isoformat(),
           "arch": args.arch, "batch_size": args.batch_size, "reps": args.reps, "compile_backend": args.compile_backend,
           "seconds": time.perf_counter() - t0, "median_s": med, "ratios": ratios(med)}
    report = markdown(res)
    print(report)
    write_results(report, args.out, res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
