"""Benchmark the fused PGD step ops against the eager chain they replace and its torch.compile.

    python benchmarks/bench_pgd_step.py                        # every op and shape, this machine
    python benchmarks/bench_pgd_step.py --ops linf_step --shapes 512x3x32x32 --no-compile
    python benchmarks/bench_pgd_step.py --threads 2 1 --clock auto --cpu-isas --markdown benchmarks/results/pgd_step_cpu.md

For each op and shape it times three variants on the same tensors, interleaved (so that
noise from other processes hits them alike): `eager` (the idiomatic chain of PyTorch ops,
in place where PyTorch allows), `compiled` (torch.compile of that chain, inductor) and
`fused` (rrm_fast.ops, whatever backend pgd_backend() reports). It prints medians, the
ratio to eager measured in the same run, and GB/s against the bytes the op must move.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rrm_fast import _ext  # noqa: E402
from rrm_fast.ops import l2_random_init_, l2_step_, linf_random_init_, linf_step_, pgd_backend  # noqa: E402

SHAPES = [(128, 3, 32, 32), (512, 3, 32, 32), (256, 3, 224, 224)]
OPS = ["linf_step", "l2_step", "linf_init", "l2_init"]
EPS, ALPHA, L2_EPS, L2_ALPHA = 8 / 255, 2 / 255, 0.5, 0.1


# ---------------------------------------------------------------------------------------
# The eager chains (what a PGD loop writes without the fused ops)
# ---------------------------------------------------------------------------------------


def linf_step_eager(delta, grad, x):
    """6 kernels: sign, add_, clamp_ (ball), add_ x, clamp_ (box), sub_ x."""
    delta.add_(grad.sign(), alpha=ALPHA).clamp_(-EPS, EPS)
    delta.add_(x).clamp_(0.0, 1.0).sub_(x)
    return delta


def _sample_view(t, like):
    return t.view([like.shape[0]] + [1] * (like.dim() - 1))


def l2_step_eager(delta, grad, x):
    """Norm of g, step, norm of delta, projection, box clip (the reference's order)."""
    g = grad.float()
    gnorm = _sample_view(g.flatten(1).norm(dim=1), delta)
    delta.add_(g / gnorm.clamp_min(1e-12), alpha=L2_ALPHA)
    dnorm = _sample_view(delta.flatten(1).norm(dim=1), delta)
    delta.mul_((L2_EPS / dnorm.clamp_min(1e-12)).clamp_(max=1.0))
    delta.add_(x).clamp_(0.0, 1.0).sub_(x)
    return delta


def linf_init_eager(delta, grad, x):
    delta.uniform_(-EPS, EPS)
    delta.add_(x).clamp_(0.0, 1.0).sub_(x)
    return delta


def l2_init_eager(delta, grad, x):
    delta.normal_()
    radius = torch.rand(delta.shape[0], device=delta.device).pow_(1.0 / delta[0].numel())
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    delta.mul_(_sample_view(radius * L2_EPS / norm, delta))
    delta.add_(x).clamp_(0.0, 1.0).sub_(x)
    return delta


FUSED = {
    "linf_step": lambda delta, grad, x: linf_step_(delta, grad, x, EPS, ALPHA),
    "l2_step": lambda delta, grad, x: l2_step_(delta, grad, x, L2_EPS, L2_ALPHA),
    "linf_init": lambda delta, grad, x: linf_random_init_(delta, x, EPS),
    "l2_init": lambda delta, grad, x: l2_random_init_(delta, x, L2_EPS),
}
EAGER = {"linf_step": linf_step_eager, "l2_step": l2_step_eager, "linf_init": linf_init_eager,
         "l2_init": l2_init_eager}


def op_bytes(op: str, delta: torch.Tensor, grad: torch.Tensor) -> int:
    """Bytes the op must move: steps read delta, grad, x and write delta; starts read x, write delta."""
    if op.endswith("_step"):
        return delta.numel() * (3 * delta.element_size() + grad.element_size())
    return delta.numel() * 2 * delta.element_size()


def make_inputs(shape, grad_dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen).to(device)
    delta = ((torch.rand(shape, generator=gen) * 2 - 1) * EPS).to(device)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=grad_dtype)
    return delta, grad, x


def _on_cpu_isa(isa: str, fn):
    """fn run with the CPU kernels of one instruction set (switching costs an atomic store)."""
    module = _ext.extension("cpu").module

    def call(*args):
        module.set_cpu_isa(isa)
        return fn(*args)

    return call


def make_variants(op: str, compile_chain: bool, cpu_isas=()) -> dict:
    """eager, compiled (optional), fused; with cpu_isas, fused once per CPU instruction set."""
    variants = {"eager": EAGER[op]}
    if compile_chain:
        variants["compiled"] = torch.compile(EAGER[op], dynamic=False)
    if cpu_isas:
        variants.update({f"fused[{isa}]": _on_cpu_isa(isa, FUSED[op]) for isa in cpu_isas})
        variants["fused"] = _on_cpu_isa("auto", FUSED[op])
    else:
        variants["fused"] = FUSED[op]
    return variants


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Clocks: wall time (the default), or the CPU time of the calling thread, which a busy
# shared machine cannot inflate by descheduling us; it covers all the work only when every
# op runs on the calling thread, i.e. on the CPU with torch.set_num_threads(1).
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def calls_per_rep(fn, device: torch.device, clock=time.perf_counter, target_s: float = 0.02) -> int:
    """How many calls make one timed repetition of ~target_s (one call when a call is longer)."""
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    once = clock() - start
    return max(1, min(1000, int(target_s / max(once, 1e-7))))


def interleaved_medians(calls: dict, device: torch.device, warmup: int = 3, reps: int = 15,
                        clock=time.perf_counter) -> dict:
    """Median seconds per call of each variant, the variants taking turns every repetition."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    inner = {name: calls_per_rep(fn, device, clock) for name, fn in calls.items()}
    samples = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            _sync(device)
            start = clock()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            samples[name].append((clock() - start) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return f"cpu: {model}, {os.cpu_count()} logical cores"


def run(ops, shapes, device, grad_dtype, reps, compile_chain, cpu_isas=(), threads=None, clock="wall"):
    rows = []
    threads = threads or torch.get_num_threads()
    for op in ops:
        for shape in shapes:
            torch._dynamo.reset()
            delta, grad, x = make_inputs(shape, grad_dtype, device)
            variants = make_variants(op, compile_chain, cpu_isas)
            with torch.no_grad():
                medians = interleaved_medians({n: (lambda f=f: f(delta, grad, x)) for n, f in variants.items()},
                                              device, reps=reps, clock=CLOCKS[clock])
            moved = op_bytes(op, delta, grad)
            for name, seconds in medians.items():
                rows.append(dict(op=op, shape="x".join(map(str, shape)), grad=str(grad_dtype).replace("torch.", ""),
                                 threads=threads, clock=clock, variant=name, ms=seconds * 1e3, x_eager=medians["eager"] / seconds,
                                 gbs=moved / seconds / 1e9))
                print(f"{op:10s} {rows[-1]['shape']:>14s} {name:14s} {seconds * 1e3:10.3f} ms "
                      f"{rows[-1]['x_eager']:6.2f}x eager {rows[-1]['gbs']:7.2f} GB/s", flush=True)
            del delta, grad, x
    return rows


def markdown(rows, header_lines) -> str:
    out = ["# PGD step ops: fused vs eager chain vs torch.compile", ""]
    out += [f"- {line}" for line in header_lines]
    out += ["", "| op | shape | grad | threads | clock | variant | median ms | x eager | GB/s |",
            "|---|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['op']} | {r['shape']} | {r['grad']} | {r['threads']} | {r['clock']} | {r['variant']} | "
                   f"{r['ms']:.3f} | {r['x_eager']:.2f} | {r['gbs']:.2f} |")
    return "\n".join(out) + "\n"


def parse_shape(text: str):
    return tuple(int(v) for v in text.lower().split("x"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=SHAPES, help="e.g. 512x3x32x32")
    parser.add_argument("--grad-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant (median taken)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch.set_num_threads (CPU); several values: the whole run once per value")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--clock", choices=[*CLOCKS, "auto"], default="wall",
                        help="wall time, or the calling thread's CPU time (CPU with --threads 1 only: robust on a "
                             "busy machine); auto: thread for 1-thread CPU runs, wall otherwise")
    parser.add_argument("--cpu-isas", nargs="*", default=None,
                        help="also time the fused CPU kernels of these instruction sets (no value: every one this CPU runs)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results table here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    backend = pgd_backend(device.type)
    isa = _ext.cpu_isa() if device.type == "cpu" else None
    started = time.time()
    header = [
        f"device: {describe_device(device)}",
        f"torch {torch.__version__}, python {platform.python_version()}, date {datetime.date.today()}",
        f"fused backend: {backend}" + (f" (CPU kernels: {isa})" if isa else ""),
        "eager: the chain of PyTorch ops (in place where possible); compiled: torch.compile(eager chain), inductor",
        "clock: `wall` = wall time; `thread` = CPU time of the calling thread, which runs all the work with 1 "
        "thread and is not inflated by other processes taking the cores",
        "median of interleaved repetitions after warm-up (synchronised on CUDA); `x eager` = eager median / variant median",
        "GB/s against the bytes the op must move: steps read delta, grad, x and write delta; starts read x, write delta",
    ]
    print("\n".join(header), flush=True)
    thread_counts = args.threads or [torch.get_num_threads()]
    if args.clock == "thread" and (device.type != "cpu" or thread_counts != [1]):
        parser.error("--clock thread measures the calling thread only: use it on the CPU with --threads 1")
    cpu_isas = ()
    if args.cpu_isas is not None and device.type == "cpu" and backend == "cpp":
        cpu_isas = args.cpu_isas or _ext.extension("cpu").module.supported_cpu_isas()
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        clock = args.clock
        if clock == "auto":
            clock = "thread" if device.type == "cpu" and threads == 1 else "wall"
        rows += run(args.ops, args.shapes, device, getattr(torch, args.grad_dtype), args.reps, not args.no_compile,
                    cpu_isas, threads, clock)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header.append(f"whole run {time.time() - started:.0f} s, load average at the end {load:.1f} "
                  "(other processes may share these cores)")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, header))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
