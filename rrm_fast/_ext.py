"""The one place that loads rrm_fast's compiled extensions (built from csrc/ by setup.py).

* ``rrm_fast._C`` registers the PGD step custom ops (``torch.ops.rrm_fast.*``) with their
  CPU and Meta kernels; ``rrm_fast._C_cuda`` adds the CUDA kernels.
* Loading happens once, on first use. A missing, broken or stale extension (built from
  other sources: its ABI_VERSION differs) is recorded with the reason, and the ops run
  their PyTorch references; ``warn_fallback_once`` says so once per device type.
* ``RRM_FAST_DISABLE_EXT=1`` skips loading altogether (to test or compare the fallback).
"""
from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

# Must equal kPgdExtAbiVersion in csrc/pgd_step_checks.h.
EXPECTED_ABI_VERSION = 1

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (see docs/kernels.md)"


@dataclass(frozen=True)
class Extension:
    """One compiled extension: the module if it loaded, else why not."""

    name: str
    module: ModuleType | None
    reason: str | None

    @property
    def loaded(self) -> bool:
        return self.module is not None


_lock = threading.Lock()
_extensions: dict[str, Extension] = {}
_warned: set[str] = set()


def _disabled() -> bool:
    return os.environ.get("RRM_FAST_DISABLE_EXT", "").strip().lower() in {"1", "true", "yes", "on"}


def _import(name: str) -> Extension:
    if _disabled():
        return Extension(name, None, "disabled by RRM_FAST_DISABLE_EXT=1")
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # not built, or built against another torch
        return Extension(name, None, f"{name} did not load ({err})")
    abi = getattr(module, "ABI_VERSION", None)
    if abi != EXPECTED_ABI_VERSION:
        return Extension(name, None, f"{name} is a stale build (ABI {abi}, expected {EXPECTED_ABI_VERSION})")
    return Extension(name, module, None)


def _load() -> dict[str, Extension]:
    if _extensions:  # loaded: no lock, so that torch.compile traces callers without a graph break
        return _extensions
    with _lock:
        if not _extensions:
            cpu = _import("rrm_fast._C")
            if not cpu.loaded:
                cuda = Extension("rrm_fast._C_cuda", None, "needs rrm_fast._C, which did not load")
            elif torch.version.cuda is None:
                cuda = Extension("rrm_fast._C_cuda", None, "this torch has no CUDA")
            else:
                cuda = _import("rrm_fast._C_cuda")
            _extensions.update(cpu=cpu, cuda=cuda)
    return _extensions


def extension(kind: str) -> Extension:
    """The 'cpu' (rrm_fast._C) or 'cuda' (rrm_fast._C_cuda) extension, loading on first call."""
    return _load()[kind]


def has_pgd_ops(device_type: str) -> bool:
    """Whether the compiled PGD step ops can run on tensors of this device type."""
    if device_type in ("cpu", "meta"):
        return extension("cpu").loaded
    if device_type == "cuda":
        return extension("cuda").loaded
    return False


def cpu_isa() -> str | None:
    """Instruction set of the compiled CPU kernels in use ('avx512', 'avx2', 'default'), or None."""
    ext = extension("cpu")
    return ext.module.cpu_isa() if ext.loaded else None


def warn_fallback_once(device_type: str) -> None:
    """Warn, once per device type and process, that the PyTorch reference runs instead."""
    if device_type in _warned:
        return
    _warned.add(device_type)
    if device_type in ("cpu", "cuda"):
        reason = extension(device_type).reason
    else:
        reason = f"rrm_fast has no compiled kernels for {device_type}"
    warnings.warn(
        f"rrm_fast: compiled PGD step kernels unavailable on {device_type} ({reason}); "
        f"running the PyTorch reference instead; {BUILD_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )


__all__ = ["EXPECTED_ABI_VERSION", "Extension", "extension", "has_pgd_ops", "cpu_isa", "warn_fallback_once"]
