"""pytest-benchmark: the PGD step ops (fused vs eager chain vs torch.compile of it).

    pytest benchmarks/test_bench_pgd_step.py --benchmark-only

Timings only; ratios and GB/s for every shape come from benchmarks/bench_pgd_step.py
(results in benchmarks/results/). Two gates, each a median ratio measured in one run
against a floor per device kind in benchmarks/floors.json: linf_step_ and l2_step_
against their eager chains.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench_pgd_step import EAGER, FUSED, SHAPES, make_inputs, make_variants, op_bytes
from rrm_fast.ops import pgd_backend
from device_timing import batched, calls_per_sample, median_per_call
from gate import synchronised

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FLOORS = json.loads((Path(__file__).parent / "floors.json").read_text())
GATE_SHAPE = (512, 3, 32, 32)
# torch.compile costs ~20 s per op and shape on the 2-core CPU: there, compile at the gate shape only.
CPU_COMPILED_SHAPES = {GATE_SHAPE}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", list(FUSED))
@pytest.mark.parametrize("variant", ["eager", "compiled", "fused"])
def test_pgd_op(benchmark, variant, op, shape):
    if variant == "compiled" and DEVICE.type == "cpu" and shape not in CPU_COMPILED_SHAPES:
        pytest.skip("torch.compile takes ~20 s per shape on this CPU; bench_pgd_step.py covers every shape")
    torch._dynamo.reset()
    delta, grad, x = make_inputs(shape, torch.float32, DEVICE)
    fn = make_variants(op, compile_chain=variant == "compiled")[variant]
    benchmark.group = f"pgd {op} {'x'.join(map(str, shape))} {DEVICE.type}"
    benchmark.extra_info.update(device=DEVICE.type, backend=pgd_backend(DEVICE.type),
                                bytes_moved=op_bytes(op, delta, grad))
    big = delta.numel() > 10_000_000
    with torch.no_grad():
        benchmark.pedantic(synchronised(lambda: fn(delta, grad, x)), warmup_rounds=2, rounds=5 if big else 20)
    assert torch.isfinite(delta).all()


@pytest.mark.parametrize("op", ["linf_step", "l2_step"])
def test_fused_vs_eager_ratio_floor(benchmark, op):
    """The fused op must beat its eager chain by the floor in benchmarks/floors.json."""
    floor = FLOORS[f"{op}_vs_eager"][DEVICE.type]
    if DEVICE.type == "cpu" and pgd_backend("cpu") == "reference":
        pytest.fail("the compiled CPU extension is not built; the fused ops would run the reference")
    delta, grad, x = make_inputs(GATE_SHAPE, torch.float32, DEVICE)
    eager, fused = EAGER[op], FUSED[op]
    calls = {"eager": lambda: eager(delta, grad, x), "fused": lambda: fused(delta, grad, x)}
    with torch.no_grad():
        # samples of ~20 ms (a call is ~1 ms on the CPU: single calls are at the mercy of the load)
        n = {name: calls_per_sample(call, DEVICE, 2e-2) for name, call in calls.items()}
        medians = median_per_call({k: batched(c, n[k]) for k, c in calls.items()}, n, DEVICE, reps=21)
    ratio = medians["eager"] / medians["fused"]
    benchmark.extra_info.update(device=DEVICE.type, eager_median_s=medians["eager"],
                                fused_median_s=medians["fused"], ratio=ratio, floor=floor)
    with torch.no_grad():
        benchmark.pedantic(synchronised(lambda: fused(delta, grad, x)), warmup_rounds=1, rounds=5)
    assert ratio >= floor, (
        f"{op}_: fused/eager speed ratio {ratio:.2f} at {GATE_SHAPE} on {DEVICE.type} is below the floor {floor} "
        "in benchmarks/floors.json"
    )
