"""Ratio gates for the pytest-benchmark suite (shared by the benchmarks/test_bench_*.py modules).

A shared, noisy machine makes absolute times useless as a gate: the gate is a *ratio* of two
timings taken round-robin in the same test (rrm_fast.bench.timing.interleaved_times), checked
against a committed floor for the device kind in benchmarks/floors.json:

    {"<gate key>": {"cpu": <floor>, "cuda": <floor>}, ...}

Every ratio is oriented so that higher is better (a speed-up, or an efficiency such as
ideal time / measured time), and the gate is ``ratio >= floor``. A device kind without a
floor is skipped, with a message, rather than gated against a number nobody measured there.
Absolute times are for ``--benchmark-save`` / ``--benchmark-compare`` on one machine only.

To record a floor after measuring on a new device kind: ``python benchmarks/gate.py set KEY
KIND VALUE`` (read-modify-write: the other keys and kinds are kept).
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rrm_fast.bench.timing import interleaved_medians, interleaved_times, medians, sync  # noqa: E402,F401

FLOORS_PATH = Path(__file__).resolve().parent / "floors.json"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronised(fn, device: torch.device = DEVICE):
    """fn, followed by a device synchronisation on CUDA, so a timing covers the work itself."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


@contextlib.contextmanager
def gate_clock():
    """The clock a gate times with, and the thread count it needs.

    CPU: one torch thread and the calling thread's CPU time. On a shared machine, wall time
    with 2 threads measured how often OpenMP's barrier waited for a descheduled thread (the
    same step took 2.4x longer with 2 threads than with 1 at load 10 on 2 cores), not the code;
    a single thread's CPU time is the work itself. CUDA: synchronised wall time.
    """
    if DEVICE.type != "cpu":
        yield "wall"
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield "thread"
    finally:
        torch.set_num_threads(previous)


def load_floors() -> dict:
    return json.loads(FLOORS_PATH.read_text())


def floor_for(key: str, kind: str | None = None) -> float | None:
    return load_floors().get(key, {}).get(kind or DEVICE.type)


def require_floor(key: str, kind: str | None = None) -> float:
    """The committed floor, or skip the calling test when this device kind has none."""
    import pytest

    kind = kind or DEVICE.type
    floor = floor_for(key, kind)
    if floor is None:
        pytest.skip(f"no floor for {key!r} on {kind} in benchmarks/floors.json: measure it on this device kind and "
                    f"record it with `python benchmarks/gate.py set {key} {kind} VALUE`")
    return floor


def check_ratio(benchmark, key: str, ratio: float, floor: float, **details) -> None:
    """Record the ratio beside the timings (pytest-benchmark extra_info) and gate it."""
    benchmark.extra_info.update(device=DEVICE.type, gate=key, ratio=ratio, floor=floor, **details)
    assert ratio >= floor, (f"{key} = {ratio:.3f} on {DEVICE.type} is below its floor {floor} in benchmarks/floors.json "
                            f"({', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in details.items())})")


def set_floor(key: str, kind: str, value: float) -> dict:
    """Read-modify-write one floor, keeping every other key and device kind."""
    floors = load_floors()
    floors.setdefault(key, {})[kind] = value
    FLOORS_PATH.write_text(json.dumps(floors, indent=2) + "\n")
    return floors


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "set":
        print(json.dumps(set_floor(sys.argv[2], sys.argv[3], float(sys.argv[4])), indent=2))
    else:
        print(__doc__)
        sys.exit(2)
