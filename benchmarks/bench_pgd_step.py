"""Benchmark the fused PGD step ops against the eager chain they replace and its torch.compile.

    python benchmarks/bench_pgd_step.py                        # every op and shape, this machine
    python benchmarks/bench_pgd_step.py --ops linf_step --shapes 512x3x32x32 --no-compile
    python benchmarks/bench_pgd_step.py --threads 2 1 --clock auto --cpu-isas --markdown benchmarks/results/pgd_step_cpu.md

For each op and shape it times three variants on the same tensors, interleaved (so that
noise from other processes hits them alike; rrm_fast.bench.timing): `eager` (the idiomatic
chain of PyTorch ops, in place where PyTorch allows), `compiled` (torch.compile of that
chain, inductor) and `fused` (rrm_fast.ops, whatever backend pgd_backend() reports). It
prints medians, the ratios to eager and to compiled measured in the same run, GB/s against
the bytes the op must move, and that as a % of a device-to-device copy measured in the same
run. On CUDA the calls rotate over enough input sets to exceed 4x the L2 cache, and each
variant is also timed as CUDA-graph replays (device time without Python and launch gaps),
the clock of the ratios when present (`--no-graphs` turns it off).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device_timing import (  # noqa: E402
    batched, calls_per_sample, copy_bandwidth, graph_replay, median_per_call, rotating, sets_to_exceed_l2,
    write_results,
)
from rrm_fast import _ext  # noqa: E402
from rrm_fast.bench.machine import LoadSampler, describe_load, describe_machine  # noqa: E402
from rrm_fast.bench.timing import CLOCKS  # noqa: E402
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


def make_variants(op: str, compile_chain: bool, cpu_isas=(), compile_backend: str = "inductor") -> dict:
    """eager, compiled (optional), fused; with cpu_isas, fused once per CPU instruction set."""
    variants = {"eager": EAGER[op]}
    if compile_chain:
        variants["compiled"] = torch.compile(EAGER[op], dynamic=False, backend=compile_backend)
    if cpu_isas:
        variants.update({f"fused[{isa}]": _on_cpu_isa(isa, FUSED[op]) for isa in cpu_isas})
        variants["fused"] = _on_cpu_isa("auto", FUSED[op])
    else:
        variants["fused"] = FUSED[op]
    return variants


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def time_variants(variants: dict, arg_sets: list, device: torch.device, reps: int, clock: str, graphs: bool):
    """({variant: wall s per call}, {variant: graph s per call} or {}, graph error or None)."""
    calls = {name: rotating(fn, arg_sets) for name, fn in variants.items()}
    for call in calls.values():  # compile outside the timing
        for _ in range(len(arg_sets) + 2):
            call()
    target = 2e-3 if device.type == "cuda" else 2e-2
    n = {name: max(len(arg_sets), calls_per_sample(call, device, target, clock)) for name, call in calls.items()}
    wall = median_per_call({k: batched(c, n[k]) for k, c in calls.items()}, n, device, reps, clock=clock)
    if not graphs:
        return wall, {}, None
    try:
        return wall, median_per_call({k: graph_replay(c, n[k], device) for k, c in calls.items()}, n, device, reps), None
    except Exception as err:  # noqa: BLE001 - reported with the results; the wall times still stand
        return wall, {}, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def run(ops, shapes, device, grad_dtype, reps, compile_chain, cpu_isas=(), threads=None, clock="wall",
        compile_backend="inductor", graphs=False, copy_gbps=None):
    rows = []
    threads = threads or torch.get_num_threads()
    for op in ops:
        for shape in shapes:
            torch._dynamo.reset()
            probe = make_inputs(shape, grad_dtype, device)
            moved = op_bytes(op, probe[0], probe[1])
            sets = [probe] + [make_inputs(shape, grad_dtype, device, seed=i)
                              for i in range(1, sets_to_exceed_l2(moved, device))]
            variants = make_variants(op, compile_chain, cpu_isas, compile_backend)
            with torch.no_grad():
                wall, graph, graph_error = time_variants(variants, sets, device, reps, clock, graphs)
            primary = graph or wall
            for name in variants:
                seconds = primary[name]
                row = dict(op=op, shape="x".join(map(str, shape)), grad=str(grad_dtype).replace("torch.", ""),
                           threads=threads, clock="graph" if graph else clock, variant=name, ms=seconds * 1e3,
                           wall_ms=wall[name] * 1e3, graph_ms=graph[name] * 1e3 if graph else None,
                           graph_error=graph_error, input_sets=len(sets),
                           x_eager=primary["eager"] / seconds,
                           x_compiled=primary["compiled"] / seconds if "compiled" in primary else None,
                           gbs=moved / seconds / 1e9)
                row["pct_of_copy"] = 100 * row["gbs"] / copy_gbps if copy_gbps else None
                rows.append(row)
                print(f"{op:10s} {row['shape']:>14s} {name:14s} {seconds * 1e3:10.4f} ms ({row['clock']}) "
                      f"{row['x_eager']:6.2f}x eager {row['gbs']:8.2f} GB/s"
                      + (f" {row['pct_of_copy']:5.1f}% of copy" if copy_gbps else ""), flush=True)
            del probe, sets
    return rows


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def markdown(rows, header_lines) -> str:
    out = ["# PGD step ops: fused vs eager chain vs torch.compile", ""]
    out += [f"- {line}" for line in header_lines]
    out += ["", "| op | shape | grad | threads | clock | variant | median ms | wall ms | x eager | x compiled | GB/s "
            "| % of copy | sets |", "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['op']} | {r['shape']} | {r['grad']} | {r['threads']} | {r['clock']} | {r['variant']} | "
                   f"{r['ms']:.4f} | {r['wall_ms']:.4f} | {r['x_eager']:.2f} | {_fmt(r['x_compiled'], '.2f')} | "
                   f"{r['gbs']:.2f} | {_fmt(r['pct_of_copy'], '.1f')} | {r['input_sets']} |")
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
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (aot_eager: the same trace without code generation, for rehearsals)")
    parser.add_argument("--clock", choices=[*CLOCKS, "auto"], default="wall",
                        help="wall time, or the calling thread's CPU time (CPU with --threads 1 only: robust on a "
                             "busy machine); auto: thread for 1-thread CPU runs, wall otherwise")
    parser.add_argument("--no-graphs", action="store_true", help="CUDA: time back-to-back calls only, no graph replay")
    parser.add_argument("--copy-mib", type=int, default=1024, help="size of the copy whose bandwidth is the ceiling")
    parser.add_argument("--cpu-isas", nargs="*", default=None,
                        help="also time the fused CPU kernels of these instruction sets (no value: every one this CPU runs)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results table here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows, copy bandwidth, machine and load")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but torch sees no GPU; run with --device cpu")
    backend = pgd_backend(device.type)
    isa = _ext.cpu_isa() if device.type == "cpu" else None
    started = time.time()
    thread_counts = args.threads or [torch.get_num_threads()]
    if args.clock == "thread" and (device.type != "cpu" or thread_counts != [1]):
        parser.error("--clock thread measures the calling thread only: use it on the CPU with --threads 1")
    copy = copy_bandwidth(device, args.copy_mib * 2**20)
    machine = describe_machine(device)
    header = [
        f"device: {machine['summary']}",
        f"python {machine['python']}, date {datetime.date.today()}",
        f"fused backend: {backend}" + (f" (CPU kernels: {isa})" if isa else ""),
        "eager: the chain of PyTorch ops (in place where possible); compiled: torch.compile(eager chain), "
        + args.compile_backend,
        "clock: `wall` = wall time of back-to-back calls; `thread` = CPU time of the calling thread, which runs all "
        "the work with 1 thread and is not inflated by other processes taking the cores; `graph` = CUDA-graph "
        "replay (device time); `wall ms` is always shown",
        "median of interleaved samples after warm-up (synchronised on CUDA); `x eager` = eager / variant, "
        "`x compiled` = compiled / variant; `sets`: input sets the calls rotate over (4x L2 on CUDA)",
        "GB/s against the bytes the op must move: steps read delta, grad, x and write delta; starts read x, write delta",
        f"copy: dst.copy_(src) of {args.copy_mib} MiB moves {copy['gbps']:.1f} GB/s (read + written) in this run; "
        "`% of copy` = the op's GB/s against it",
    ]
    print("\n".join(header), flush=True)
    cpu_isas = ()
    if args.cpu_isas is not None and device.type == "cpu" and backend == "cpp":
        cpu_isas = args.cpu_isas or _ext.extension("cpu").module.supported_cpu_isas()
    rows = []
    with LoadSampler(interval=5.0) as load:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            clock = args.clock
            if clock == "auto":
                clock = "thread" if device.type == "cpu" and threads == 1 else "wall"
            rows += run(args.ops, args.shapes, device, getattr(torch, args.grad_dtype), args.reps, not args.no_compile,
                        cpu_isas, threads, clock, args.compile_backend, device.type == "cuda" and not args.no_graphs,
                        copy["gbps"])
    header.append(f"whole run {time.time() - started:.0f} s; {describe_load(load.stats())}")
    graph_error = next((r["graph_error"] for r in rows if r.get("graph_error")), None)
    if graph_error:
        header.append(f"CUDA-graph capture failed ({graph_error}): ratios use wall time")
    write_results(markdown(rows, header), args.markdown,
                  {"machine": machine, "load": load.stats(), "copy": copy, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
