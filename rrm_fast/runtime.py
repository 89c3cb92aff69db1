"""Device, precision and seeding decisions, made once per run and explained in one line each."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import time

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


def _median_step_time(model, x, y, dtype, iters=4) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        with (torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if i:  # first iteration is warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def resolve_precision(amp: bool, device: torch.device, model=None, sample=None) -> Precision:
    """--amp: fp16 + GradScaler on CUDA (bf16 where supported, no scaler needed); on a CPU,
    bf16 autocast only where a quick measurement of this model's training step shows it
    faster, otherwise fp32 with a note."""
    if not amp:
        return Precision(None, device, "fp32 (no --amp)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, device, "bf16 autocast on CUDA")
        return Precision(torch.float16, device, "fp16 autocast + GradScaler on CUDA")
    if model is None or sample is None:
        return Precision(None, device, "fp32 on CPU (bf16 not measured)")
    x, y = sample
    import copy
    probe = copy.deepcopy(model).train()
    fp32 = _median_step_time(probe, x, y, None)
    bf16 = _median_step_time(probe, x, y, torch.bfloat16)
    if bf16 < 0.9 * fp32:
        return Precision(torch.bfloat16, device, f"bf16 autocast on CPU (measured {fp32 / bf16:.2f}x faster than fp32)")
    return Precision(None, device, f"--amp: fp32 on CPU (bf16 measured {fp32 / bf16:.2f}x of fp32 speed here, not faster)")
