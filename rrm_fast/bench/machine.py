"""What machine a measurement ran on, and how busy it was: every benchmark result carries this.

Timings on a shared machine mean little without the load beside them, so ``LoadSampler``
records the 1-minute load average every few seconds while a benchmark runs, and
``describe_machine`` names the CPU (lscpu), the core count, the torch version and threads,
and the GPU when there is one.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import threading
import time

import torch


def cpu_model() -> str:
    """The CPU's model name: lscpu, else /proc/cpuinfo, else what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "device": device.type, "loadavg": [round(v, 2) for v in os.getloadavg()]}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    info["summary"] = summary(info)
    return info


def summary(info: dict) -> str:
    where = info.get("gpu") or f"CPU {info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads"
    return f"{where}; torch {info['torch']}"


class LoadSampler:
    """Samples os.getloadavg()[0] every ``interval`` seconds in a daemon thread.

    ``with LoadSampler() as load: ...`` then ``load.stats()`` -> start/end/min/median/max and the
    number of cores, so a reader can see e.g. "load 12 on 2 cores: timings are ~6x slowed".
    """

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_time = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def stats(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"cores": os.cpu_count(), "start": round(s[0], 2), "end": round(s[-1], 2), "min": round(min(s), 2),
                "median": round(statistics.median(s), 2), "max": round(max(s), 2), "samples": len(s),
                "interval_s": self.interval}


def load_verdict(stats: dict, threads: int) -> str:
    """Whether other jobs shared the machine: a median load above the benchmark's own threads
    (plus half a core of slack for the interpreter and the kernel) means they did."""
    if stats["median"] > threads + 0.5:
        return "Other jobs shared the machine: absolute times are this machine's under this load"
    return "Nothing else ran (the load is the benchmark's own)"


def describe_load(stats: dict) -> str:
    return (f"1-min load average {stats['median']:g} median (min {stats['min']:g}, max {stats['max']:g}, "
            f"{stats['samples']} samples) on {stats['cores']} cores")
