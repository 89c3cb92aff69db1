"""Timing for ratios measured in one run, and the one clock switch.

Clocks. ``wall`` is time.perf_counter (synchronised on CUDA by the callers that time device
work). ``thread`` is the calling thread's CPU time: with one torch thread on a CPU all of a
training step runs on that thread, so its CPU time is the time the work takes on this
machine with nothing else running, which other jobs on a shared machine cannot inflate (they
still share caches and memory bandwidth). ``clock(name)`` returns the function to read; the
trainer takes it by injection (``train_run(cfg, clock=clock("thread"))``).

Round robin. A ratio of two timings taken minutes apart on a shared machine measures the
load, not the code. ``interleaved_times`` times every call once per round, in turn, for
``reps`` rounds, so a burst of load falls on all of them alike; ratios are then taken between
medians of the same run. Each timed call is synchronised on CUDA, so it measures the work,
not the launch.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

CLOCKS = ("wall", "thread")
_CLOCK_FUNCTIONS = {"wall": time.perf_counter, "thread": time.thread_time}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(name: str) -> Callable[[], float]:
    """The function that reads clock ``name`` (seconds)."""
    return _reader(name)


def _reader(name) -> Callable[[], float]:
    """A clock's read function from its name (a read function passes through)."""
    if callable(name):
        return name
    if name not in _CLOCK_FUNCTIONS:
        raise ValueError(f"unknown clock {name!r}; choose one of {', '.join(CLOCKS)}")
    return _CLOCK_FUNCTIONS[name]


def _name(clock) -> str:
    return "thread" if clock is time.thread_time else "wall" if callable(clock) else clock


def check_clock(name, device: torch.device) -> None:
    """``thread`` measures the work without the time other processes hold the core - but
    only all of it when the work runs on the calling thread."""
    _reader(name)
    if _name(name) == "thread" and (torch.device(device).type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("the thread clock needs a CPU run with 1 torch thread (--threads 1): with more, or on a GPU, "
                         "the work runs outside the calling thread and its time would not be counted")


def resolve_clock(name: str, device: torch.device | str) -> str:
    """``auto``: the thread clock where it measures everything (a CPU run with one torch
    thread), else wall time; any other name is checked and returned."""
    device = torch.device(device)
    if name == "auto":
        name = "thread" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    check_clock(name, device)
    return name


def time_once(fn: Callable, device: torch.device, clock="wall") -> float:
    """Seconds of one call of ``fn`` on ``clock`` (a name of CLOCKS or a read function such
    as time.perf_counter), synchronised on CUDA so it measures the work, not the launch."""
    read = _reader(clock)
    sync(device)
    t0 = read()
    fn()
    sync(device)
    return read() - t0


def interleaved_times(calls: dict[str, Callable], device: torch.device, reps: int = 20, warmup: int = 3,
                      rotate: bool = True, clock="wall") -> dict[str, list[float]]:
    """Seconds of each call in each of ``reps`` rounds (after ``warmup`` untimed rounds).

    ``rotate`` starts each round at the next call, so no call always runs first after the
    previous round's last (caches, allocator, thermal state are shared alike). ``clock``:
    "wall" (synchronised wall time), "thread" (CPU time of this thread; see check_clock), or
    a read function (time.perf_counter, time.thread_time).
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


def interleaved_medians(calls: dict[str, Callable], device: torch.device, reps: int = 20, warmup: int = 3,
                        clock="wall") -> dict:
    """Median seconds of each call, timed round-robin (see ``interleaved_times``)."""
    return medians(interleaved_times(calls, device, reps=reps, warmup=warmup, clock=clock))


def per_round_median(times: dict[str, list[float]], fn: Callable[[dict], float]) -> float:
    """Median over rounds of ``fn(round)``, where ``round`` maps each name to its time in that
    round. A ratio formed within a round compares timings taken seconds apart, so load that
    drifts over the run cancels; gates use it, reports show it beside the ratio of medians."""
    n = min(len(v) for v in times.values())
    return statistics.median(fn({k: v[i] for k, v in times.items()}) for i in range(n))
