"""Benchmark: forward + backward of the feature-matching loss, fused op vs eager vs torch.compile.

    python benchmarks/bench_feature_matching.py [--device cuda] [--kinds cosine,rel_l2]
        [--dtypes float32,bfloat16] [--out benchmarks/results/feature_matching_cpu.md]

What one timed call does: loss = f(S, T) with reduction "mean", then dL/dS by autograd (the
teacher is frozen, as in RRM, so T needs no gradient). Variants, all in the same run:
  eager     the PyTorch reference (rrm_fast/ops/feature_matching_reference.py)
  compiled  torch.compile(reference, fullgraph=True), one static-shape graph per problem
  fused     rrm_fast.feature_matching_loss: the Triton kernel on CUDA; on CPU it dispatches to
            the same reference as "eager" (Triton needs a GPU), so there it measures only the
            dispatch overhead and its ratio should be ~1.
Reported: median time over the timed repetitions (after warm-up, synchronised), the ratio to
eager (eager time / variant time, > 1 is faster), achieved GB/s against the bytes the op must
move (read S and T, write dS: B*D*(size(S) + size(T) + size(S))), and peak memory above what
was live before the call (CUDA: max_memory_allocated; CPU: peak RSS growth, see CpuPeakMemory).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import rrm_fast  # noqa: E402
from rrm_fast.ops import feature_matching_backend  # noqa: E402
from rrm_fast.ops.feature_matching_reference import feature_matching_loss_ref  # noqa: E402

BATCH_SIZES = (128, 512, 4096)
FEATURE_DIMS = (512, 2048)
VARIANTS = ("eager", "compiled", "fused")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# device description and memory measurement
# ---------------------------------------------------------------------------------------------
def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or "unknown CPU"
    cores = os.cpu_count()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
        cores = int(re.search(r"^CPU\(s\):\s*(\d+)", lscpu, re.M).group(1))
    except (OSError, subprocess.CalledProcessError, AttributeError):
        pass
    return f"{model}, {cores} logical cores, torch threads {torch.get_num_threads()}"


class CpuPeakMemory:
    """Peak resident-memory growth of this process while it runs a function (Linux + glibc).

    glibc keeps freed blocks resident in its heap, so RSS alone would hide how much memory an
    op needs. While measuring, blocks >= 64 KiB are mmapped (released on free) and free heap
    memory is returned first; while timing, glibc is left as a long-running process settles
    (big mmap/trim thresholds), because mmapping every intermediate makes eager PyTorch page-
    fault on each one and would slow it ~10x.
    """

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    TIMING_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its dynamic mmap threshold on 64-bit
    MEASURE_THRESHOLD = 64 * 2**10

    def __init__(self):
        self.libc = None
        if sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK):
            try:
                self.libc = ctypes.CDLL("libc.so.6")
            except OSError:
                pass
        self.available = self.libc is not None
        if self.available:
            self._timing_mode()

    def _timing_mode(self) -> None:
        self.libc.mallopt(self.M_MMAP_THRESHOLD, self.TIMING_THRESHOLD)
        self.libc.mallopt(self.M_TRIM_THRESHOLD, 2 * self.TIMING_THRESHOLD)

    @staticmethod
    def _status_bytes(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024

    def measure(self, fn) -> int:
        self.libc.mallopt(self.M_MMAP_THRESHOLD, self.MEASURE_THRESHOLD)
        self.libc.mallopt(self.M_TRIM_THRESHOLD, 0)
        self.libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            base = self._status_bytes("VmRSS")
            fn()
            return self._status_bytes("VmHWM") - base
        finally:
            self._timing_mode()


def peak_memory_bytes(fn, device: torch.device, cpu_meter: CpuPeakMemory) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not cpu_meter.available:
        return None
    return cpu_meter.measure(fn)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def median_seconds(fn, device: torch.device, warmup: int = 3, min_reps: int = 5, max_reps: int = 50,
                   min_total_s: float = 0.5) -> float:
    """Median wall time of fn() after warm-up; each repetition synchronised (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    total = 0.0
    while len(times) < min_reps or (total < min_total_s and len(times) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
        times.append(t)
        total += t
    return statistics.median(times)


def interleaved_medians(calls: dict, device: torch.device, warmup: int = 3, reps: int = 15) -> dict:
    """Median seconds of each call, timing them in alternation so that load from other
    processes (a shared CI machine) falls on all of them alike; for ratio gates."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            times[name].append(median_seconds(fn, device, warmup=0, min_reps=1, max_reps=1, min_total_s=0.0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_inputs(B: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    student = torch.randn(B, D, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    # Correlated like a student that has started to match its teacher.
    teacher = (0.6 * student.detach().float() + 0.8 * torch.randn(B, D, generator=g).to(device)).to(dtype)
    return student, teacher


def make_variant(name: str, kind: str):
    """A function (S, T) -> dL/dS computing forward and backward with the named implementation."""
    if name == "eager":
        loss_fn = feature_matching_loss_ref
    elif name == "compiled":
        # One static graph per (shape, kind, dtype): more than dynamo's default 8 recompiles,
        # after which it would silently run the function eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        loss_fn = torch.compile(feature_matching_loss_ref, fullgraph=True, dynamic=False)
    elif name == "fused":
        loss_fn = rrm_fast.feature_matching_loss
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")

    def fwd_bwd(student, teacher):
        loss = loss_fn(student, teacher, kind, "mean")
        (grad,) = torch.autograd.grad(loss, student)
        return grad

    return fwd_bwd


def op_bytes(student: torch.Tensor, teacher: torch.Tensor) -> int:
    """Bytes the fused op must move: read S, read T, write dS."""
    n = student.numel()
    return n * (2 * student.element_size() + teacher.element_size())


def measure(B: int, D: int, kind: str, dtype: torch.dtype, device: torch.device, variants=VARIANTS,
            cpu_meter: CpuPeakMemory | None = None, **timing) -> list[dict]:
    cpu_meter = cpu_meter or CpuPeakMemory()
    student, teacher = make_inputs(B, D, dtype, device)
    rows = []
    for name in variants:
        fwd_bwd = make_variant(name, kind)

        def call():
            return fwd_bwd(student, teacher)

        t = median_seconds(call, device, **timing)
        rows.append(dict(kind=kind, B=B, D=D, dtype=str(dtype).replace("torch.", ""), variant=name,
                         seconds=t, gbps=op_bytes(student, teacher) / t / 1e9,
                         peak_bytes=peak_memory_bytes(call, device, cpu_meter)))
    eager = next(r["seconds"] for r in rows if r["variant"] == "eager") if "eager" in variants else None
    for r in rows:
        r["speedup_vs_eager"] = eager / r["seconds"] if eager else None
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def format_report(rows: list[dict], device: torch.device, seconds_total: float) -> str:
    fused_backend = feature_matching_backend(device.type)
    lines = [
        "# Feature-matching loss: fused vs eager vs torch.compile (forward + backward)",
        "",
        f"- device: {device.type}: {describe_device(device)}",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"date {datetime.date.today().isoformat()}, whole run {seconds_total:.0f} s"
        + (f", load average at the end {os.getloadavg()[0]:.1f} (other processes share these cores)" if device.type == "cpu" else ""),
        f"- `fused` ran the **{fused_backend}** backend"
        + (" (Triton needs a GPU, so on this CPU `fused` is the same reference code as `eager`:"
           " its ratio shows dispatch overhead and noise, not a kernel speed-up)" if fused_backend == "reference" else ""),
        "- one call: mean-reduced loss of S, T (B x D) and dL/dS by autograd; T frozen (no gradient)",
        "- median of synchronised repetitions after 3 warm-up calls; `x eager` = eager median / variant median",
        "- GB/s against the bytes the op must move: read S and T, write dS",
        "- peak MiB: memory above what was live before the call (CUDA: max_memory_allocated;"
        " CPU: peak RSS growth while glibc mmaps every block >= 64 KiB; timed with glibc's mmap threshold at 32 MiB)",
        "",
        "| kind | B | D | dtype | variant | median ms | x eager | GB/s | peak MiB |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        ratio = "n/a" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}"
        lines.append(f"| {r['kind']} | {r['B']} | {r['D']} | {r['dtype']} | {r['variant']} | "
                     f"{r['seconds'] * 1e3:.3f} | {ratio} | {r['gbps']:.2f} | {peak} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default="cosine", help="comma-separated: cosine,rel_l2,normalized_l2")
    p.add_argument("--dtypes", default="float32", help=f"comma-separated from {sorted(DTYPES)}")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--dims", default=",".join(map(str, FEATURE_DIMS)))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    args = p.parse_args(argv)
    for dt in args.dtypes.split(","):
        if dt not in DTYPES:
            p.error(f"unknown dtype {dt!r}; choose from {sorted(DTYPES)}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no GPU; run with --device cpu")
    t0 = time.perf_counter()
    cpu_meter = CpuPeakMemory()
    rows = []
    for kind in args.kinds.split(","):
        for dt in args.dtypes.split(","):
            for B in map(int, args.batch_sizes.split(",")):
                for D in map(int, args.dims.split(",")):
                    got = measure(B, D, kind, DTYPES[dt], device, tuple(args.variants.split(",")), cpu_meter)
                    rows.extend(got)
                    for r in got:
                        print(f"{kind:13s} B={B:5d} D={D:5d} {dt:8s} {r['variant']:8s} "
                              f"{r['seconds'] * 1e3:9.3f} ms  x{r['speedup_vs_eager'] or 0:5.2f}  {r['gbps']:7.1f} GB/s",
                              flush=True)
    report = format_report(rows, device, time.perf_counter() - t0)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    main()
