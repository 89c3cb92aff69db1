"""What rrm_fast runs on here: versions, devices, CPU capability, compiled extensions and
the backend of every fused op.

    python -m rrm_fast.info

Paste its output into bug reports and benchmark notes.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

from . import __version__, _ext
from .bench.machine import cpu_model
from .ops import feature_matching_backend, pgd_backend


def _distribution_version(*names: str) -> str:
    """Version of the first installed distribution among names (no import: DALI imports slowly)."""
    for name in names:
        try:
            return f"{importlib.metadata.version(name)} ({name})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _dali_version() -> str:
    dali = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                  if (d.metadata["Name"] or "").lower().startswith("nvidia-dali"))
    return _distribution_version(*dali) if dali else "not installed"


def _cuda_devices() -> list[str]:
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append(f"cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                       f"{p.multi_processor_count} SMs")
    return devices


def _extension_line(kind: str) -> str:
    ext = _ext.extension(kind)
    return f"{ext.name}: loaded" if ext.loaded else f"{ext.name}: not loaded ({ext.reason})"


def report() -> list[tuple[str, str]]:
    """(label, value) pairs, in the order printed."""
    cpu_ext = _ext.extension("cpu")
    isa = _ext.cpu_isa()
    rows = [
        ("rrm_fast", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("triton", _distribution_version("triton", "pytorch-triton")),
        ("dali", _dali_version()),
        ("cpu", f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"),
        ("cpu capability", f"torch: {torch.backends.cpu.get_cpu_capability()}"
         + (f"; rrm_fast kernels: {isa} (can run: {', '.join(cpu_ext.module.supported_cpu_isas())})" if isa else "")),
        ("cuda devices", "; ".join(_cuda_devices()) or "none"),
        ("extension", _extension_line("cpu")),
        ("cuda extension", _extension_line("cuda")),
    ]
    for device_type in ("cpu", "cuda"):
        rows.append((f"pgd step ops ({device_type})", pgd_backend(device_type)))
    for device_type in ("cpu", "cuda"):
        rows.append((f"feature matching ({device_type})", feature_matching_backend(device_type)))
    return rows


def main() -> int:
    rows = report()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
