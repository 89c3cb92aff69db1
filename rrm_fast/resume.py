"""Training state for exact resume: what a run needs to continue bit for bit after a crash.

A training-state checkpoint is RUN_DIR/state/step-<global step>.safetensors (every tensor:
model, optimizer buffers, the torch/CUDA RNG states, method state such as Free AT's delta,
the running epoch sums) plus a JSON sidecar (counters, scheduler/scaler/optimizer scalars,
the numpy and Python RNG states as lists of ints, and the sha256 of the tensor file and of
the sidecar itself). No pickles. Both files are written to a temporary name, fsynced and
renamed, tensors first: a checkpoint exists once its sidecar does, so a kill at any moment
leaves the previous checkpoints intact. The last ``KEEP`` checkpoints are kept; loading
walks them newest first and skips (with a message) any that fails its checksums.

Nested state (optimizer state dicts, method state) is stored by ``split_tensors``: each
tensor goes into the safetensors file under its path ("optimizer/state/3/momentum_buffer")
and is replaced in the JSON tree by {"__tensor__": that path}.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, write_tensor_file
from .io import atomic_write_json, atomic_write_text, fsync_dir, sha256_file

FORMAT = "rrm_fast-train-state"
FORMAT_VERSION = 1
KEEP = 2
STATE_DIR = "state"
_NAME = re.compile(r"^step-(\d{9})\.json$")


# --------------------------------------------------------------------------- nested state <-> (JSON, tensors)
def split_tensors(obj, prefix: str, tensors: dict):
    """A JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under a path key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) for k in obj):  # optimizer state is keyed by parameter index
            return {"__int_keys__": {str(k): split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        raise TypeError(f"cannot store a dict with mixed key types at {prefix}")
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return split_tensors(obj.item(), prefix, tensors)
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state (at {prefix})")


def join_tensors(obj, tensors: dict, device=None):
    """The inverse of ``split_tensors``."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            t = tensors[obj["__tensor__"]]
            return t.to(device) if device is not None else t
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        if set(obj) == {"__int_keys__"}:
            return {int(k): join_tensors(v, tensors, device) for k, v in obj["__int_keys__"].items()}
        return {k: join_tensors(v, tensors, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors, device) for v in obj]
    return obj


# --------------------------------------------------------------------------- RNG
def capture_rng(device: torch.device, prefix: str, tensors: dict) -> dict:
    """Every RNG stream this process draws from: torch (CPU), CUDA (the run's device), numpy, Python."""
    tensors[f"{prefix}/torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors[f"{prefix}/cuda"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def restore_rng(meta: dict, device: torch.device, prefix: str, tensors: dict) -> None:
    torch.set_rng_state(tensors[f"{prefix}/torch"].to(torch.uint8))
    if device.type == "cuda" and f"{prefix}/cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"{prefix}/cuda"].to(torch.uint8), device)
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Run a block (evaluation, building a teacher) without moving any training RNG stream."""
    tensors: dict = {}
    meta = capture_rng(device, "rng", tensors)
    try:
        yield
    finally:
        restore_rng(meta, device, "rng", tensors)


# --------------------------------------------------------------------------- files
def state_dir(run_dir) -> Path:
    return Path(run_dir) / STATE_DIR


def _sidecar_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def list_states(run_dir) -> list[tuple[int, Path]]:
    """(step, sidecar path) of the committed training states, newest first."""
    d = state_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / name) for name in os.listdir(d) if (m := _NAME.match(name))]
    return sorted(found, reverse=True)


def save_state(run_dir, step: int, tensors: dict, meta: dict, keep: int = KEEP) -> Path:
    """Commit one training state (tensors first, then the sidecar), then drop all but the
    newest ``keep``. Returns the sidecar path."""
    d = state_dir(run_dir)
    stem = d / f"step-{step:09d}"
    digest = write_tensor_file(stem.with_suffix(".safetensors"), tensors)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "sha256": digest, **meta}
    meta["sidecar_sha256"] = _sidecar_digest(meta)
    atomic_write_json(stem.with_suffix(".json"), meta)
    for _, old in list_states(run_dir)[keep:]:
        # sidecar first: a half-deleted checkpoint is one without a sidecar, which loading ignores
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    for name in os.listdir(d):  # leftovers of writes killed mid-way, and orphaned tensor files
        p = d / name
        if name.endswith(".tmp") or (name.endswith(".safetensors") and not p.with_suffix(".json").exists()):
            p.unlink(missing_ok=True)
    fsync_dir(d)
    return stem.with_suffix(".json")


def read_state(sidecar: Path) -> tuple[dict, dict]:
    """(tensors, meta) of one training state; CheckpointError when it fails a check."""
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{sidecar} is unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not an rrm_fast training state")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{sidecar} has training-state format {meta.get('format_version')}, this version "
                              f"reads {FORMAT_VERSION}")
    if meta.get("sidecar_sha256") != _sidecar_digest(meta):
        raise CheckpointError(f"{sidecar} fails its own checksum (edited or corrupt)")
    tensor_path = sidecar.with_suffix(".safetensors")
    if not tensor_path.exists():
        raise CheckpointError(f"{tensor_path} is missing")
    if sha256_file(tensor_path) != meta["sha256"]:
        raise CheckpointError(f"{tensor_path} fails its sha256 check (truncated or corrupt)")
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(tensor_path))
    except Exception as e:
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file ({type(e).__name__})") from None
    return tensors, meta


def load_latest_state(run_dir, say=print) -> tuple[dict, dict, Path] | None:
    """The newest training state that passes its checks, or None when the run has none.
    A corrupt newest one is reported through ``say`` and the previous one used; when every
    one is corrupt, CheckpointError."""
    states = list_states(run_dir)
    problems = []
    for _, sidecar in states:
        try:
            tensors, meta = read_state(sidecar)
        except CheckpointError as e:
            problems.append(str(e))
            say(f"resume: skipping a damaged checkpoint: {e}; trying the previous one")
            continue
        return tensors, meta, sidecar
    if problems:
        raise CheckpointError(f"every training-state checkpoint in {state_dir(run_dir)} is damaged ({problems[0]}); "
                              "the run cannot be resumed - start it again with a new --out")
    return None


# --------------------------------------------------------------------------- metrics log
class MetricsLog:
    """metrics.jsonl: one JSON object per epoch, each appended as one whole line with a single
    write(), then flushed and fsynced, so a crash leaves whole lines only (at worst a last
    partial line, which ``truncate`` drops on resume)."""

    def __init__(self, path):
        self.path = Path(path)

    def reset(self) -> None:
        atomic_write_text(self.path, "")

    def append(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write (full disk, signal): finish the line
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a partial last line from a crash mid-write
        return out

    def truncate(self, n_rows: int) -> None:
        """Keep the first ``n_rows`` rows (the epochs the resumed checkpoint has completed)."""
        rows = self.rows()[:n_rows]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


__all__ = ["KEEP", "MetricsLog", "capture_rng", "join_tensors", "list_states", "load_latest_state",
           "preserved_rng", "read_state", "restore_rng", "save_state", "split_tensors", "state_dir"]
