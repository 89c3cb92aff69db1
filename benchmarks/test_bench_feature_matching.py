"""pytest-benchmark: forward + backward of the feature-matching loss (fused vs eager vs compiled).

    pytest benchmarks/test_bench_feature_matching.py --benchmark-only

Timings only; the numbers with ratios, GB/s and peak memory come from
benchmarks/bench_feature_matching.py (results in benchmarks/results/). One gate:
fused / eager median ratio >= the floor for this device kind in benchmarks/floors.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench_feature_matching import BATCH_SIZES, FEATURE_DIMS, make_inputs, make_variant
from gate import interleaved_medians, synchronised

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FLOORS = json.loads((Path(__file__).parent / "floors.json").read_text())
# torch.compile costs ~30 s per static shape on the 2-core CPU: there, compile one shape only.
CPU_COMPILED_SHAPES = {(512, 2048)}


@pytest.mark.parametrize("D", FEATURE_DIMS)
@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("variant", ["eager", "compiled", "fused"])
def test_feature_matching_fwd_bwd(benchmark, variant, B, D):
    if variant == "compiled" and DEVICE.type == "cpu" and (B, D) not in CPU_COMPILED_SHAPES:
        pytest.skip("torch.compile takes ~30 s per shape on this CPU; bench_feature_matching.py covers every shape")
    student, teacher = make_inputs(B, D, torch.float32, DEVICE)
    fwd_bwd = make_variant(variant, "cosine")
    call = synchronised(lambda: fwd_bwd(student, teacher))
    benchmark.group = f"feature_matching cosine B={B} D={D} {DEVICE.type}"
    benchmark.extra_info.update(device=DEVICE.type, bytes_moved=student.numel() * 3 * student.element_size())
    grad = benchmark.pedantic(call, warmup_rounds=3, rounds=10 if B * D >= 4096 * 2048 else 30)
    assert torch.isfinite(grad).all()


def test_fused_vs_eager_ratio_floor(benchmark):
    """Fused must not be slower than the floor allows (on CPU fused *is* the reference: ~1x)."""
    floor = FLOORS["feature_matching_fused_vs_eager"][DEVICE.type]
    B, D = (4096, 2048) if DEVICE.type == "cuda" else (512, 2048)
    student, teacher = make_inputs(B, D, torch.float32, DEVICE)
    eager, fused = make_variant("eager", "cosine"), make_variant("fused", "cosine")
    medians = interleaved_medians(
        {"eager": lambda: eager(student, teacher), "fused": lambda: fused(student, teacher)}, DEVICE, reps=15
    )
    ratio = medians["eager"] / medians["fused"]
    benchmark.extra_info.update(device=DEVICE.type, eager_median_s=medians["eager"], fused_median_s=medians["fused"],
                                ratio=ratio, floor=floor)
    benchmark.pedantic(synchronised(lambda: fused(student, teacher)), warmup_rounds=1, rounds=5)
    assert ratio >= floor, (
        f"fused/eager speed ratio {ratio:.2f} at B={B} D={D} on {DEVICE.type} is below the floor {floor} "
        "in benchmarks/floors.json"
    )
