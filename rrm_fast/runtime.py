"""Device, precision and seeding decisions, made once per run and explained in one line each."""
from __future__ import annotations

import contextlib
import logging
import random
import time

import numpy as np
import torch

log = logging.getLogger("rrm_fast")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
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
