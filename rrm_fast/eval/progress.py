"""The progress file: per-batch results of a long evaluation, rewritten atomically after
every batch (through rrm_fast.io), so an interrupted run can resume where it stopped."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import atomic_write_json


def mask_str(mask: torch.Tensor) -> str:
    """A bool mask as a '0'/'1' string (compact in JSON)."""
    return "".join("1" if v else "0" for v in mask.tolist())


def mask_from(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


class ProgressFile:
    """Per-batch results, rewritten atomically after every batch, so an interrupted run can
    resume: a record is reused only when the settings that produced it are identical."""

    def __init__(self, path, settings: dict, resume: bool):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.records: dict[str, dict] = {}
        if not self.path.exists():
            return
        if not resume:
            print(f"note: {self.path} holds an interrupted run; starting over (pass --resume to continue it)")
            return
        try:
            saved = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{self.path} is not valid JSON; delete it and rerun") from None
        if saved.get("settings") != self.settings:
            before = saved.get("settings", {})
            diff = sorted(k for k in set(self.settings) | set(before) if self.settings.get(k) != before.get(k))
            raise ValueError(f"{self.path} was written with different settings ({', '.join(diff)}); rerun with "
                             f"the same flags, or without --resume to start over")
        self.records = saved.get("records", {})
        if self.records:
            print(f"resuming: {len(self.records)} batch(es) already done in {self.path}")

    def get(self, key):
        return self.records.get(str(key))

    def put(self, key, record: dict) -> None:
        self.records[str(key)] = record
        atomic_write_json(self.path, {"settings": self.settings, "records": self.records})

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()
