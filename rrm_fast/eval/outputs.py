"""Where an evaluation writes: never over its inputs, never over an earlier result.

``check_result_path`` runs before any work: the results file (``--out``, or the default next
to the checkpoint) and its ``.partial.json`` progress file must not be a checkpoint, a
checkpoint's sidecar, a directory, a device or anything but an earlier result of this tool,
and must be creatable where they are. ``keep_earlier`` runs when the new result is written:
an earlier result at the same name is first copied to a dated name beside it, and the CLI
says where.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import atomic_write_bytes, check_writable_place

MAX_RESULT_BYTES = 64 << 20


def _json_mapping(path: Path) -> dict | None:
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_result(path: Path) -> bool:
    """An evaluation result written by this tool (a JSON object naming its suite and checkpoint)."""
    data = _json_mapping(path)
    return data is not None and "suite" in data and "checkpoint" in data


def is_progress(path: Path) -> bool:
    data = _json_mapping(path)
    return data is not None and set(data) == {"settings", "records"}


def check_result_path(path: Path, checkpoint: Path, what: str, belongs=is_result) -> None:
    """ValueError (one line naming ``what``) unless ``path`` may receive this evaluation's JSON."""
    checkpoint = Path(checkpoint)
    inputs = {checkpoint.resolve(), checkpoint.with_suffix(".json").resolve()}
    if path.suffix == ".safetensors" or path.resolve() in inputs:
        role = "the checkpoint" if path.suffix == ".safetensors" else "the checkpoint's sidecar"
        raise ValueError(f"{what} {path} is {role} being evaluated; name a new .json file, e.g. "
                         f"{checkpoint.with_suffix('.eval.json')}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; name a .json file in it, e.g. {path / 'result.eval.json'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file (a device, a FIFO, ...); name a .json file")
    if path.with_suffix(".safetensors").exists():
        raise ValueError(f"{what} {path} is the sidecar of the checkpoint {path.with_suffix('.safetensors')}, which "
                         "needs it to load; name another .json file")
    if path.is_file() and not belongs(path):
        raise ValueError(f"{what} {path} exists and is not an rrm_fast evaluation result; it is left alone - name "
                         "another file")
    check_writable_place(path, what)


def keep_earlier(path: Path) -> Path | None:
    """Copy an earlier result at ``path`` to ``STEM.<its time>.json`` beside it; return that name."""
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    base = path.name[: -len(path.suffix)] if path.suffix else path.name
    keep, n = path.with_name(f"{base}.{stamp}{path.suffix}"), 1
    while keep.exists():
        n += 1
        keep = path.with_name(f"{base}.{stamp}-{n}{path.suffix}")
    atomic_write_bytes(keep, path.read_bytes())
    return keep
