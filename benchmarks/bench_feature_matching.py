"""Benchmark: forward + backward of the feature-matching loss, fused op vs eager vs torch.compile.

    python benchmarks/bench_feature_matching.py [--device cuda] [--kinds cosine,rel_l2]
        [--dtypes float32,bfloat16] [--shapes 4096x2048,128x128] [--out results.md] [--json results.json]

What one timed call does: loss = f(S, T) with reduction "mean", then dL/dS by autograd (the
teacher is frozen, as in RRM, so T needs no gradient). Variants, all in the same run:
  eager     the PyTorch reference (rrm_fast/ops/feature_matching_reference.py)
  compiled  torch.compile(reference, fullgraph=True), one static-shape graph per problem
  fused     rrm_fast.feature_matching_loss: the Triton kernel on CUDA; on CPU it dispatches to
            the same reference as "eager" (Triton needs a GPU), so there it measures only the
            dispatch overhead and its ratio should be ~1.
Timing (rrm_fast.bench.timing: round-robin samples, medians): each sample is several back-to-back
calls; on CUDA the calls rotate over enough input sets to exceed 4x the L2 cache, and each
variant is also timed as CUDA-graph replays (device time, no Python or launch gaps), which is
the column the ratios use when it exists. Reported: median per call, the ratio to eager and to
compiled (their time / this time, > 1 is faster), achieved GB/s against the bytes the op must
move (read S and T, write dS: B*D*(size(S) + size(T) + size(S))), and peak memory above what was
live before the call (CUDA: max_memory_allocated; CPU: peak RSS growth, see CpuPeakMemory).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import re
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import rrm_fast  # noqa: E402
from device_timing import (  # noqa: E402
    batched, calls_per_sample, graph_replay, median_per_call, rotating, sets_to_exceed_l2, write_results,
)
from rrm_fast.bench.machine import LoadSampler, describe_load, describe_machine  # noqa: E402
from rrm_fast.ops import feature_matching_backend  # noqa: E402
from rrm_fast.ops.feature_matching_reference import feature_matching_loss_ref  # noqa: E402

BATCH_SIZES = (128, 512, 4096)
FEATURE_DIMS = (512, 2048)
VARIANTS = ("eager", "compiled", "fused")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# memory measurement
# ---------------------------------------------------------------------------------------------
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
# the timed call
# ---------------------------------------------------------------------------------------------
def make_inputs(B: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    student = torch.randn(B, D, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    # Correlated like a student that has started to match its teacher.
    teacher = (0.6 * student.detach().float() + 0.8 * torch.randn(B, D, generator=g).to(device)).to(dtype)
    return student, teacher


def make_variant(name: str, kind: str, compile_backend: str = "inductor"):
    """A function (S, T) -> dL/dS computing forward and backward with the named implementation."""
    if name == "eager":
        loss_fn = feature_matching_loss_ref
    elif name == "compiled":
        # One static graph per (shape, kind, dtype): more than dynamo's default 8 recompiles,
        # after which it would silently run the function eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        loss_fn = torch.compile(feature_matching_loss_ref, fullgraph=True, dynamic=False, backend=compile_backend)
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
            cpu_meter: CpuPeakMemory | None = None, reps: int = 15, compile_backend: str = "inductor",
            graphs: bool | None = None) -> list[dict]:
    """One row per variant, timed round-robin in this call (see the module docstring)."""
    cpu_meter = cpu_meter or CpuPeakMemory()
    graphs = device.type == "cuda" if graphs is None else graphs
    probe = make_inputs(B, D, dtype, device)
    sets = [probe] + [make_inputs(B, D, dtype, device, seed=i)
                      for i in range(1, sets_to_exceed_l2(op_bytes(*probe), device))]
    fns = {name: make_variant(name, kind, compile_backend) for name in variants}
    calls = {name: rotating(fn, sets) for name, fn in fns.items()}
    for call in calls.values():  # compile / autotune outside the timing
        for _ in range(len(sets) + 1):
            call()
    target = 2e-3 if device.type == "cuda" else 2e-2
    n = {name: max(len(sets), calls_per_sample(call, device, target)) for name, call in calls.items()}
    wall = median_per_call({k: batched(c, n[k]) for k, c in calls.items()}, n, device, reps)
    graph, graph_error = {}, None
    if graphs:
        try:
            graph = median_per_call({k: graph_replay(c, n[k], device) for k, c in calls.items()}, n, device, reps)
        except Exception as err:  # noqa: BLE001 - reported in the table; wall times still stand
            graph_error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    primary = graph or wall
    rows = []
    for name in variants:
        rows.append(dict(kind=kind, B=B, D=D, dtype=str(dtype).replace("torch.", ""), variant=name,
                         backend=feature_matching_backend(device.type) if name == "fused" else "reference",
                         wall_s=wall[name], graph_s=graph.get(name), graph_error=graph_error,
                         seconds=primary[name], clock="graph" if graph else "wall", input_sets=len(sets),
                         gbps=op_bytes(*probe) / primary[name] / 1e9,
                         peak_bytes=peak_memory_bytes(lambda: fns[name](*probe), device, cpu_meter)))
    for r in rows:
        for base in ("eager", "compiled"):
            r[f"x_{base}"] = primary[base] / r["seconds"] if base in primary else None
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(rows: list[dict], device: torch.device, machine: dict, load: dict, seconds_total: float) -> str:
    fused_backend = feature_matching_backend(device.type)
    graph_error = next((r["graph_error"] for r in rows if r.get("graph_error")), None)
    lines = [
        "# Feature-matching loss: fused vs eager vs torch.compile (forward + backward)",
        "",
        f"- device: {machine['summary']}",
        f"- python {machine['python']}, date {datetime.date.today().isoformat()}, whole run {seconds_total:.0f} s; "
        f"{describe_load(load)}",
        f"- `fused` ran the **{fused_backend}** backend"
        + (" (Triton needs a GPU, so on this CPU `fused` is the same reference code as `eager`:"
           " its ratio shows dispatch overhead and noise, not a kernel speed-up)" if fused_backend == "reference" else ""),
        "- one call: mean-reduced loss of S, T (B x D) and dL/dS by autograd; T frozen (no gradient)",
        "- medians of round-robin samples of back-to-back calls, after warm-up; `graph us`: CUDA-graph replay"
        " (device time), the clock of the ratios and GB/s when present; `x eager` = eager / variant, `x compiled`"
        " = compiled / variant; `sets`: input sets the calls rotate over (4x L2 on CUDA)",
        "- GB/s against the bytes the op must move: read S and T, write dS",
        "- peak MiB: memory above what was live before the call (CUDA: max_memory_allocated;"
        " CPU: peak RSS growth while glibc mmaps every block >= 64 KiB)",
    ]
    if graph_error:
        lines.append(f"- CUDA-graph capture failed ({graph_error}): ratios use wall time")
    lines += ["", "| kind | B | D | dtype | variant | wall us | graph us | x eager | x compiled | GB/s | peak MiB | sets |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        graph = None if r["graph_s"] is None else r["graph_s"] * 1e6
        lines.append(f"| {r['kind']} | {r['B']} | {r['D']} | {r['dtype']} | {r['variant']} | {r['wall_s'] * 1e6:.1f} | "
                     f"{_fmt(graph, '.1f')} | {_fmt(r['x_eager'], '.2f')} | {_fmt(r['x_compiled'], '.2f')} | "
                     f"{r['gbps']:.1f} | {_fmt(peak, '.1f')} | {r['input_sets']} |")
    return "\n".join(lines) + "\n"


def parse_shape(text: str) -> tuple[int, int]:
    try:
        B, D = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BxD, e.g. 4096x2048") from None
    return B, D


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default="cosine", help="comma-separated: cosine,rel_l2,normalized_l2")
    p.add_argument("--dtypes", default="float32", help=f"comma-separated from {sorted(DTYPES)}")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--dims", default=",".join(map(str, FEATURE_DIMS)))
    p.add_argument("--shapes", type=lambda t: [parse_shape(x) for x in t.split(",")],
                   help="comma-separated BxD pairs, e.g. 4096x2048,128x128 (instead of --batch-sizes x --dims)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--reps", type=int, default=15, help="round-robin samples per variant (median taken)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of `compiled` "
                   "(aot_eager: the same trace without code generation, for quick CPU rehearsals)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--json", type=Path, help="also write the rows, machine and load here")
    args = p.parse_args(argv)
    for dt in args.dtypes.split(","):
        if dt not in DTYPES:
            p.error(f"unknown dtype {dt!r}; choose from {sorted(DTYPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda given but torch sees no GPU; run with --device cpu")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes or [(B, D) for B in map(int, args.batch_sizes.split(",")) for D in map(int, args.dims.split(","))]
    t0 = time.perf_counter()
    cpu_meter = CpuPeakMemory()
    rows = []
    with LoadSampler(interval=5.0) as load:
        for kind in args.kinds.split(","):
            for dt in args.dtypes.split(","):
                for B, D in shapes:
                    got = measure(B, D, kind, DTYPES[dt], device, tuple(args.variants.split(",")), cpu_meter,
                                  reps=args.reps, compile_backend=args.compile_backend)
                    rows.extend(got)
                    for r in got:
                        print(f"{kind:13s} B={B:5d} D={D:5d} {dt:8s} {r['variant']:8s} {r['seconds'] * 1e6:10.1f} us "
                              f"({r['clock']})  x{_fmt(r['x_eager'], '5.2f')} eager  x{_fmt(r['x_compiled'], '5.2f')} "
                              f"compiled  {r['gbps']:7.1f} GB/s", flush=True)
    machine = describe_machine(device)
    report = format_report(rows, device, machine, load.stats(), time.perf_counter() - t0)
    print(report)
    write_results(report, args.out, {"machine": machine, "load": load.stats(), "rows": rows}, args.json)
    return report


if __name__ == "__main__":
    main()
