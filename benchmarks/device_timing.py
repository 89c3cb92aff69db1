"""What the kernel benchmarks add to rrm_fast.bench.timing (which interleaves and takes medians).

* ``batched(fn, n)``: one timed sample = n back-to-back calls, so a call shorter than the
  synchronisation around a sample (~10 us on a GPU) is still measured; ``calls_per_sample``
  picks n from one timed call.
* ``rotating(fn, arg_sets)``: each call takes the next of several input sets. A problem that
  fits in the GPU's L2 (60 MB on an H200) would otherwise be timed from cache on repeats;
  ``sets_to_exceed_l2`` sizes the rotation to 4x L2.
* ``graph_replay(fn, n, device)``: n calls captured once in a CUDA graph; replaying it times
  the device work without the Python and launch overhead between kernels (what a fused
  kernel's efficiency is judged by; the wall time of back-to-back calls is reported beside it).
* ``copy_bandwidth(device)``: a device-to-device copy, bytes read + written per second: the
  ceiling a memory-bound op is compared with.
* ``write_results``: a benchmark's Markdown report and JSON data, written atomically.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rrm_fast.bench.timing import interleaved_times, medians, sync, time_once  # noqa: E402
from rrm_fast.io import atomic_write_json, atomic_write_text  # noqa: E402


def batched(fn, n: int):
    def call():
        for _ in range(n):
            fn()
    return call


def calls_per_sample(fn, device: torch.device, target_s: float, clock: str = "wall", most: int = 1000) -> int:
    """How many back-to-back calls make one timed sample of about target_s (at least one)."""
    once = time_once(fn, device, clock)
    return max(1, min(most, int(target_s / max(once, 1e-7))))


def rotating(fn, arg_sets: list[tuple]):
    """fn(*args) over the argument sets in turn, one set per call."""
    turn = itertools.cycle(arg_sets)
    return lambda: fn(*next(turn))


def sets_to_exceed_l2(bytes_per_set: int, device: torch.device, factor: int = 4, most: int = 16) -> int:
    """Input sets to rotate through so that together they are factor x the L2 cache (1 on a CPU)."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    return max(1, min(most, -(-factor * l2 // max(1, bytes_per_set))))


def graph_replay(fn, n: int, device: torch.device):
    """A callable replaying n calls of fn captured in one CUDA graph (after warm-up calls on a side
    stream, as capture requires). Raises if fn cannot be captured (e.g. it synchronises)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    sync(device)
    return graph.replay


def median_per_call(calls: dict, per_sample: dict, device: torch.device, reps: int, warmup: int = 2,
                    clock: str = "wall") -> dict:
    """Median seconds per call of each entry, samples interleaved round-robin (timing's)."""
    times = interleaved_times(calls, device, reps=reps, warmup=warmup, clock=clock)
    return {name: t / per_sample[name] for name, t in medians(times).items()}


def copy_bandwidth(device: torch.device, nbytes: int = 2**30, reps: int = 10) -> dict:
    """dst.copy_(src) of nbytes: (read + written) bytes per second, median of graph replays on a
    GPU (wall time on a CPU)."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    def copy():
        dst.copy_(src)
    if device.type == "cuda":
        per_sample = 5
        call = graph_replay(copy, per_sample, device)
    else:
        per_sample, call = 1, copy
    seconds = median_per_call({"copy": call}, {"copy": per_sample}, device, reps=reps)["copy"]
    del src, dst
    return {"bytes": 2 * n * 4, "seconds": seconds, "gbps": 2 * n * 4 / seconds / 1e9}


def write_results(report: str, markdown_path: Path | None, data: dict, json_path: Path | None) -> None:
    """The report and the data, each where asked (rrm_fast.io: a crash leaves the old file or the new)."""
    if markdown_path:
        atomic_write_text(markdown_path, report)
    if json_path:
        atomic_write_json(json_path, data)
