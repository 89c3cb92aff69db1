"""Compile every Triton kernel variant the wrappers launch for a real GPU, without a GPU.

    python -m rrm_fast.kernels.aot --arch 80 90 [--json variants.json]

Triton's JIT takes its target from the active driver. ``CompileOnlyDriver`` reports a CUDA
target (sm_80, sm_90, ...) and launches nothing; ``compile_launch`` then runs the JIT's own
argument specialisation (pointer dtypes, 16-divisibility, integers equal to 1) and compiles
TTIR -> TTGIR -> LLVM IR -> PTX -> cubin with Triton's bundled ptxas, exactly as the first call
on that GPU would. The launches are built by the wrappers' own ``fwd_launch`` / ``scale_launch``
(kernels/feature_matching.py) on meta tensors (shapes and strides, no memory), so what is
compiled here is what the wrappers launch.

The variants cannot be listed exhaustively (every B and D specialises differently), so
``cases()`` covers each axis the wrappers vary: the kind; the dtypes (same, and the autocast
mixes); which gradients are written; one-chunk and looped D; contiguous and strided inputs;
every BLOCK_D that ``launch_config`` can pick; and the backward's row scaling for every dtype
it is launched with. Identical specialisations are compiled once (the JIT's cache).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import GPUDriver
from triton.runtime.driver import driver

from . import feature_matching as fm

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
SAME_DTYPES = tuple(DTYPE_NAMES)
# student/teacher mixes: a low-precision student under autocast against an fp32 (or fp64) teacher
MIXED_DTYPES = ((torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float64))
GRAD_MODES = ((True, False), (True, True), (False, False), (False, True))  # (write dS, write dT)
CORE_SHAPES = ((4096, 2048), (3, 8193))  # one chunk with full tiles; the looped D (not 16-divisible)
# spill gate: fp32 accumulation of fp32/bf16 inputs, D up to this
SPILL_FREE_DTYPES = ("fp32", "bf16")
SPILL_FREE_MAX_D = 8192


@dataclass(frozen=True)
class Case:
    """One launch of a wrapper: fwd (feature_matching_fwd) or scale (scale_rows)."""

    kernel: str
    B: int
    D: int
    s_dtype: str  # fwd: student; scale: the saved gradient
    t_dtype: str  # fwd: teacher; scale: grad_output
    kind: str = ""  # fwd only
    write_ds: bool = False
    write_dt: bool = False
    strided: bool = False  # fwd: student column-major (strides (1, B)), teacher every other column
    out_dtype: str = ""  # scale only

    def describe(self) -> str:
        if self.kernel == "scale":
            return f"scale {self.s_dtype}*{self.t_dtype}->{self.out_dtype} B={self.B} D={self.D}"
        grads = "+".join(n for n, w in (("dS", self.write_ds), ("dT", self.write_dt)) if w) or "no-grad"
        layout = " strided" if self.strided else ""
        return f"fwd {self.kind} {self.s_dtype}/{self.t_dtype} B={self.B} D={self.D} {grads}{layout}"


def _fwd(kind, s_dt, t_dt, shape, grads, strided=False) -> Case:
    return Case("fwd", *shape, DTYPE_NAMES[s_dt], DTYPE_NAMES[t_dt], kind, *grads, strided)


def cases() -> list[Case]:
    kinds = tuple(fm.KIND_IDS)
    gated = (torch.float32, torch.bfloat16)
    out = []
    # every kind x dtype (pair) x one-chunk/looped D, frozen teacher (RRM's case)
    dtype_pairs = [(d, d) for d in SAME_DTYPES] + list(MIXED_DTYPES)
    for kind, (s_dt, t_dt), shape in itertools.product(kinds, dtype_pairs, CORE_SHAPES):
        out.append(_fwd(kind, s_dt, t_dt, shape, (True, False)))
    # the other gradient modes (teacher trained too, no_grad, student frozen); looped: both written
    for kind, dt, grads in itertools.product(kinds, SAME_DTYPES, GRAD_MODES[1:]):
        out.append(_fwd(kind, dt, dt, CORE_SHAPES[0], grads))
    for kind, dt in itertools.product(kinds, SAME_DTYPES):
        out.append(_fwd(kind, dt, dt, CORE_SHAPES[1], (True, True)))
    # strided inputs (column stride B: the int64 column offsets)
    for kind, dt, shape in itertools.product(kinds, SAME_DTYPES, CORE_SHAPES):
        out.append(_fwd(kind, dt, dt, shape, (True, True), strided=True))
    # spill gate: every BLOCK_D launch_config picks, at full tiles; looped D up to 8192
    block_ds = sorted({fm.launch_config(4096, d)[1] for d in range(1, fm.MAX_BLOCK_D + 1)})
    for kind, dt in itertools.product(kinds, gated):
        for block_d in block_ds:
            out.append(_fwd(kind, dt, dt, (4096, block_d), (True, True)))
        for shape, strided in itertools.product(((4096, SPILL_FREE_MAX_D), (3, SPILL_FREE_MAX_D - 1)), (False, True)):
            out.append(_fwd(kind, dt, dt, shape, (True, True), strided))
        out.append(_fwd(kind, dt, dt, (1, 10), (True, False)))  # batch of one, D not 16-divisible
        out.append(_fwd(kind, dt, dt, (128, 128), (True, False)))  # the demo's features
    # backward: saved gradient (saved_grad_dtype of the input's dtype) x grad_output (fp32; fp64
    # when an input was fp64) -> the input's dtype
    for dt in SAME_DTYPES:
        go = torch.float64 if dt == torch.float64 else torch.float32
        for shape in ((4096, 2048), (3, 8193), (1, 10), (128, 128)):
            out.append(Case("scale", *shape, DTYPE_NAMES[fm.saved_grad_dtype(dt)], DTYPE_NAMES[go],
                            out_dtype=DTYPE_NAMES[dt]))
    out.append(Case("scale", 4096, 2048, "fp32", "fp64", out_dtype="fp32"))  # an fp32 input beside an fp64 one
    return list(dict.fromkeys(out))


_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


def case_launch(case: Case) -> fm.Launch:
    """The Launch the wrapper builds for this case (meta tensors: no memory is touched)."""
    B, D = case.B, case.D
    if case.kernel == "scale":
        g = torch.empty(B, D, device="meta", dtype=_BY_NAME[case.s_dtype])
        go = torch.empty(B, device="meta", dtype=_BY_NAME[case.t_dtype])
        return fm.scale_launch(g, go, _BY_NAME[case.out_dtype])[0]
    s_dt, t_dt = _BY_NAME[case.s_dtype], _BY_NAME[case.t_dtype]
    if case.strided:
        s = torch.empty(D, B, device="meta", dtype=s_dt).t()
        t = torch.empty(B, 2 * D, device="meta", dtype=t_dt)[:, ::2]
    else:
        s = torch.empty(B, D, device="meta", dtype=s_dt)
        t = torch.empty(B, D, device="meta", dtype=t_dt)
    return fm.fwd_launch(s, t, case.kind, 1e-6, case.write_ds, case.write_dt)[0]


class CompileOnlyDriver(GPUDriver):
    """A Triton driver for a CUDA target that is not present: it compiles, it never launches."""

    def __init__(self, arch: int, warp_size: int = 32):
        self.target = GPUTarget("cuda", arch, warp_size)
        self.device = f"compile-only-sm_{arch}"  # the JIT keeps one kernel cache per device

    @classmethod
    def is_active(cls):
        return False  # never chosen by Triton itself

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise RuntimeError("CompileOnlyDriver builds no launcher")

    def get_benchmarker(self):
        raise RuntimeError("CompileOnlyDriver runs nothing")


@contextlib.contextmanager
def compile_only(arch: int):
    """Make Triton's JIT compile for sm_<arch> until the block ends (then restore its driver)."""
    try:
        previous = driver.active
    except RuntimeError:  # no GPU here: Triton has no default driver; None restores that state
        previous = None
    driver.set_active(CompileOnlyDriver(arch))
    try:
        yield
    finally:
        driver.set_active(previous)


def compile_launch(launch: fm.Launch):
    """Compile (never run) one launch for the active target; returns Triton's CompiledKernel."""
    if fm.INTERPRETED:
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1; compile in a process without it")
    return launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.params)


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack, shared and local (spill) bytes per thread, from Triton's bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {text[:300]}")
    return dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups())))


def widest_load_bits(ptx: str) -> int:
    """Width of the widest global load in the PTX (128: 16-byte vector loads)."""
    widths = [int(n) * int(b) for n, b in re.findall(r"ld\.global[.\w]*?\.v(\d)\.[bfsu](\d+)", ptx)]
    widths += [int(b) for b in re.findall(r"ld\.global(?:\.[a-z]\w*)*?\.[bfsu](\d+)\s", ptx)]
    return max(widths, default=0)


def spill_gated(case: Case) -> bool:
    """Variants that must not spill: fp32/bf16 inputs (fp32 accumulation) with D <= 8192."""
    dtypes = (case.s_dtype, case.t_dtype) + ((case.out_dtype,) if case.kernel == "scale" else ())
    return all(d in SPILL_FREE_DTYPES for d in dtypes) and case.D <= SPILL_FREE_MAX_D


def compile_all(arch: int, selected: list[Case] | None = None) -> list[dict]:
    """One row per distinct compiled kernel (cases that specialise identically share a row)."""
    rows, seen = [], {}
    with compile_only(arch):
        for case in selected if selected is not None else cases():
            launch = case_launch(case)
            t0 = time.perf_counter()
            try:
                compiled = compile_launch(launch)
            except Exception as err:  # noqa: BLE001 - a failed variant is a result, reported by the caller
                rows.append(dict(arch=arch, case=asdict(case), variant=case.describe(), error=f"{type(err).__name__}: {err}"))
                continue
            if id(compiled) in seen:  # the same kernel: it is gated if any of its cases is
                seen[id(compiled)]["also"].append(case.describe())
                seen[id(compiled)]["spill_gated"] |= spill_gated(case)
                continue
            ptx = compiled.asm["ptx"]
            row = dict(arch=arch, case=asdict(case), variant=case.describe(), seconds=round(time.perf_counter() - t0, 2),
                       num_warps=launch.params["num_warps"], block=(launch.params["BLOCK_B"], launch.params["BLOCK_D"]),
                       load_bits=widest_load_bits(ptx),
                       spill_gated=spill_gated(case), also=[], **resource_usage(compiled.asm["cubin"]))
            row["spills"] = row["local"] > 0 or row["stack"] > 0
            seen[id(compiled)] = row
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'arch':>5} {'regs':>4} {'spill':>5} {'local':>5} {'warps':>5} {'block':>9} {'ld':>4}  variant"]
    for r in rows:
        if "error" in r:
            lines.append(f"sm_{r['arch']:<2} FAILED  {r['variant']}: {r['error'][:200]}")
            continue
        block = "x".join(map(str, r["block"]))
        lines.append(f"sm_{r['arch']:<2} {r['regs']:>4} {'YES' if r['spills'] else 'no':>5} {r['local']:>5} "
                     f"{r['num_warps']:>5} {block:>9} {r['load_bits']:>4}  {r['variant']}"
                     + (f"  (+{len(r['also'])} same)" if r["also"] else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    for arch in args.arch:
        t0 = time.perf_counter()
        got = compile_all(arch)
        rows += got
        print(format_table(got))
        print(f"sm_{arch}: {sum('error' not in r for r in got)} kernels compiled, "
              f"{sum('error' in r for r in got)} failed, {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
