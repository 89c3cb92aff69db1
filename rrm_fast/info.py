"""What rrm_fast runs on here: versions, devices, CPU capability, compiled extensions, the
backend of every fused op, where each dataset is looked for (and whether it is there), and
the teacher cache (where, how many, how large).

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


def _size(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def storage() -> list[tuple[str, str]]:
    """(label, value) rows: each dataset's default location and the teacher cache."""
    from .data.datasets import dataset_locations
    from .train.teacher import cache_dir

    rows = [(f"data {name}", where) for name, where in dataset_locations().items()]
    teachers = cache_dir() / "teachers"
    source = "$RRM_FAST_CACHE" if os.environ.get("RRM_FAST_CACHE") else "default; set RRM_FAST_CACHE to move it"
    if teachers.is_dir():
        trained = [d for d in teachers.iterdir() if (d / "final.safetensors").is_file()]
        others = sum(1 for d in teachers.iterdir() if d.is_dir()) - len(trained)
        what = f"{len(trained)} trained teacher(s){f', {others} unfinished' if others else ''}, {_size(teachers) / 2**20:.1f} MiB"
    else:
        what = "empty (created when a run first trains a teacher)"
    rows.append(("teacher cache", f"{teachers} ({source}): {what}"))
    return rows


def build_parser():
    from .errors import OneLineArgumentParser
    return OneLineArgumentParser(prog="python -m rrm_fast.info", description=__doc__.split("\n\n")[0].replace("\n", " "))


def main(argv=None) -> int:
    from .errors import run_cli

    def run():
        build_parser().parse_args(argv)
        rows = report() + storage()
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label:<{width}}  {value}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
