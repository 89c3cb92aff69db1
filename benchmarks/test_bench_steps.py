"""pytest-benchmark: one training step of each method for the demo's student, and two ratio gates.

    python -m pytest benchmarks/test_bench_steps.py --benchmark-only

The student is the demo's (cnn_wide, projected to the cnn_small teacher's phi width if they
differ, the teacher's head; batch 128 of Fashion-MNIST 28x28, channels_last, fp32), built by
rrm_fast.bench.steps exactly as ``python -m rrm_fast.bench steps`` builds it; that command
gives the full table with quartiles (benchmarks/results/steps_cpu.md). Gates, each a ratio of times measured
round-robin in the same test (the median over rounds of the ratio within a round, so load that
drifts during the test cancels; on CPU with one thread and its CPU-time clock, see
gate.gate_clock) against a floor in benchmarks/floors.json (higher is better):

  rrm_step_efficiency   (natural step + teacher forward) / RRM step: RRM must cost what natural
                        training plus one teacher forward costs (issue 8: RRM <= 1.10 x that)
  pgd7_step_efficiency  (7 x attack pass + natural step) / PGD-7 AT step: PGD-AT against its
                        ideal of k forward+input-backward passes plus one training step
"""
from __future__ import annotations

import pytest

from gate import DEVICE, check_ratio, gate_clock, interleaved_times, medians, require_floor, synchronised
from rrm_fast.bench.steps import build_steps, pgd_vs_ideal, rrm_overhead
from rrm_fast.bench.timing import per_round_median

PGD_K = 7


@pytest.fixture(scope="module")
def setup():
    return build_steps(DEVICE, batch_size=128, pgd_steps=(PGD_K,), breakdown=False)


@pytest.mark.parametrize("item", ["natural", "teacher_forward", "rrm", "attack_pass", f"pgd_at_{PGD_K}"])
def test_train_step(benchmark, setup, item):
    benchmark.group = f"training step, cnn_wide batch 128 28x28 ({DEVICE.type})"
    benchmark.extra_info.update(device=DEVICE.type, **{k: str(v) for k, v in setup.description.items()})
    benchmark.pedantic(synchronised(setup.calls[item]), warmup_rounds=2, rounds=5 if item.startswith("pgd") else 10)


def test_rrm_step_ratio_floor(benchmark, setup):
    """RRM step against natural step + teacher forward, interleaved in this test."""
    floor = require_floor("rrm_step_efficiency")
    names = ("natural", "teacher_forward", "rrm")
    with gate_clock() as clock:
        times = interleaved_times({k: setup.calls[k] for k in names}, DEVICE, reps=20, warmup=3, clock=clock)
    med = medians(times)
    ratio = 1 / per_round_median(times, rrm_overhead)
    benchmark.pedantic(synchronised(setup.calls["rrm"]), rounds=1)
    check_ratio(benchmark, "rrm_step_efficiency", ratio, floor, clock=clock, natural_s=med["natural"],
                teacher_forward_s=med["teacher_forward"], rrm_s=med["rrm"],
                ratio_of_medians=1 / rrm_overhead(med))


def test_pgd_step_vs_ideal_floor(benchmark, setup):
    """PGD-7 AT step against 7 attack passes + one natural step, interleaved in this test."""
    floor = require_floor("pgd7_step_efficiency")
    names = ("natural", "attack_pass", f"pgd_at_{PGD_K}")
    with gate_clock() as clock:
        times = interleaved_times({k: setup.calls[k] for k in names}, DEVICE, reps=8, warmup=1, clock=clock)
    med = medians(times)
    ratio = 1 / per_round_median(times, lambda t: pgd_vs_ideal(t, PGD_K))
    benchmark.pedantic(synchronised(setup.calls["attack_pass"]), rounds=1)
    check_ratio(benchmark, "pgd7_step_efficiency", ratio, floor, clock=clock, natural_s=med["natural"],
                attack_pass_s=med["attack_pass"], pgd_step_s=med[f"pgd_at_{PGD_K}"],
                ideal_s=PGD_K * med["attack_pass"] + med["natural"], ratio_of_medians=1 / pgd_vs_ideal(med, PGD_K))
