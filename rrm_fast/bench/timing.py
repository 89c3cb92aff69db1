"""Round-robin timing for ratios measured in one run.

A ratio of two timings taken minutes apart on a shared machine measures the load, not the
code. ``interleaved_times`` times every call once per round, in turn, for ``reps`` rounds,
so a burst of load falls on all of them alike; ratios are then taken between medians of the
same run. Each timed call is synchronised on CUDA, so it measures the work, not the launch.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "thread")


def check_clock(clock: str, device: torch.device) -> None:
    """``thread`` (CPU time of the calling thread) measures the work without the time other
    processes hold the core - but only all of it when the work runs on that one thread."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
    if clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("the thread clock needs a CPU run with 1 torch thread (--threads 1): with more, or on a GPU, "
                         "the work runs outside the calling thread and its time would not be counted")


def time_once(fn: Callable, device: torch.device, clock: str = "wall") -> float:
    if clock == "thread":
        t0 = time.thread_time()
        fn()
        return time.thread_time() - t0
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved_times(calls: dict[str, Callable], device: torch.device, reps: int = 20, warmup: int = 3,
                      rotate: bool = True, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds of each call in each of ``reps`` rounds (after ``warmup`` untimed rounds).

    ``rotate`` starts each round at the next call, so no call always runs first after the
    previous round's last (caches, allocator, thermal state are shared alike). ``clock``:
    "wall" (synchronised wall time) or "thread" (CPU time of this thread; see check_clock).
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1 (got {reps})")
    check_clock(clock, device)
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)] if rotate else names
        for name in order:
            times[name].append(time_once(calls[name], device, clock))
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(ts) for name, ts in times.items()}


def interleaved_medians(calls: dict[str, Callable], device: torch.device, reps: int = 20, warmup: int = 3) -> dict:
    """Median seconds of each call, timed round-robin (see ``interleaved_times``)."""
    return medians(interleaved_times(calls, device, reps=reps, warmup=warmup))


def per_round_median(times: dict[str, list[float]], fn: Callable[[dict], float]) -> float:
    """Median over rounds of ``fn(round)``, where ``round`` maps each name to its time in that
    round. A ratio formed within a round compares timings taken seconds apart, so load that
    drifts over the run cancels; gates use it, reports show it beside the ratio of medians."""
    n = min(len(v) for v in times.values())
    return statistics.median(fn({k: v[i] for k, v in times.items()}) for i in range(n))
