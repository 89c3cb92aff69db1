"""Device, precision and seeding decisions, made once per run and explained in one line each."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("rrm_fast")


def keep_freed_host_memory() -> str:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block over its mmap threshold (at most 32 MiB; a CPU
    attack batch's activations are ~100 MiB) with a fresh mmap and unmaps it on free, so
    each forward/backward page-faults its activations in again: measured on the 2-core
    CPU, PGD-20 evaluation of the demo student spent 47 s of 77 s CPU time in the kernel
    and ran 1.8x slower than with this switch (30.1 s against 16.5 s per 1,000 images).
    With mmap off and trimming off, freed blocks are reused from the heap and the process
    keeps its high-water mark, as PyTorch's CUDA caching allocator does. Called by the CLIs only (importing rrm_fast changes nothing);
    RRM_FAST_HOST_ALLOCATOR=system opts out. Returns a one-line description."""
    if os.environ.get("RRM_FAST_HOST_ALLOCATOR", "").lower() == "system":
        return "host allocator: glibc defaults (RRM_FAST_HOST_ALLOCATOR=system)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "host allocator: unchanged (no glibc mallopt)"
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1  # an int: 2 GiB
    return "host allocator: glibc keeps freed memory" if ok else "host allocator: unchanged (mallopt refused)"


DEVICE_HINT = "use auto, cpu, cuda or cuda:N"


def check_device_name(name: str | None) -> None:
    """A device name torch understands (whether the machine has it is resolve_device's question)."""
    if name in (None, "auto"):
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r} is not a device rrm_fast runs on; {DEVICE_HINT}")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Precision:
    """How the run computes: autocast dtype (or None for fp32) and whether a GradScaler is needed."""

    def __init__(self, dtype: torch.dtype | None, device: torch.device, note: str):
        self.dtype = dtype
        self.device = device
        self.note = note
        self.use_scaler = dtype == torch.float16 and device.type == "cuda"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.use_scaler)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX-512 BF16 or AMX-BF16; Arm's bf16
    feature), from /proc/cpuinfo's flags. Without it, bf16 autocast on a CPU is emulated and
    slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(amp: bool, device: torch.device) -> Precision:
    """--amp: bf16 autocast on CUDA where supported (no scaler needed), else fp16 + GradScaler;
    on a CPU, bf16 autocast where the CPU has native bf16 instructions, otherwise fp32 with a
    note. The rule reads the hardware, not a timing, so the same command on the same machine
    always computes the same way (a speed probe flipped between bf16 and fp32 with the load)."""
    if not amp:
        return Precision(None, device, "fp32 (no --amp)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, device, "bf16 autocast on CUDA")
        return Precision(torch.float16, device, "fp16 autocast + GradScaler on CUDA")
    if cpu_has_native_bf16():
        return Precision(torch.bfloat16, device, "bf16 autocast on CPU (native bf16 instructions)")
    return Precision(None, device, "--amp: fp32 on CPU (no native bf16 instructions here; emulated bf16 is slower)")