"""Checkpoints: safetensors weights + a JSON sidecar (model spec, run info, checksum).

Never pickles. Every file is written to a temporary name in the same directory, flushed,
fsynced and renamed, so a crash or Ctrl-C leaves either the old file or the new one.
The JSON records the sha256 of the weights file; loading verifies it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from .models import FeatureClassifier, create_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match what it is loaded into."""


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors_for_save(state: dict) -> dict:
    # safetensors refuses shared/non-contiguous storage; store plain contiguous CPU copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def model_spec(model) -> dict:
    """What it takes to rebuild a zoo model: recorded by the trainer at creation time."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError(f"{type(model).__name__} has no .spec; build it with rrm_fast.models.create_model")
    spec = dict(spec)
    spec["feature_dim"] = int(model.feature_dim)
    return spec


def save_model(path, model, meta: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_tensors_for_save(model.state_dict()), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    sidecar = {"format": "rrm_fast", "format_version": FORMAT_VERSION, "model": model_spec(model),
               "sha256": digest, **(meta or {})}
    atomic_write_json(path.with_suffix(".json"), sidecar)
    return path


def read_meta(path) -> dict:
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass the .safetensors file a training run wrote (RUN_DIR/final.safetensors)")
    if not meta_path.exists():
        raise CheckpointError(f"checkpoint metadata {meta_path} is missing; rrm_fast checkpoints are a .safetensors file plus its .json sidecar")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON ({e.msg}); the file is corrupt") from None


def load_state(path, verify: bool = True) -> tuple[dict, dict]:
    path = Path(path)
    meta = read_meta(path)
    if verify and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (truncated or corrupt); use an earlier checkpoint or retrain")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for bad headers
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}); the file is corrupt") from None
    return state, meta


def build_model(spec: dict):
    model = create_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["mean"], spec["std"],
                         spec.get("image_size", 28))
    if spec.get("feature_dim") and spec["feature_dim"] != model.feature_dim:
        model.add_projection(spec["feature_dim"])
    model.spec = {k: spec[k] for k in ("arch", "num_classes", "in_channels", "mean", "std", "image_size") if k in spec}
    return model


def load_model(path, device="cpu") -> tuple[FeatureClassifier, dict]:
    """Rebuild a zoo model from its checkpoint; returns (model in eval mode, metadata)."""
    state, meta = load_state(path)
    model = build_model(meta["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {meta['model']['arch']}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model.to(device).eval(), meta


__all__ = ["CheckpointError", "save_model", "load_model", "load_state", "read_meta", "build_model",
           "atomic_write_json", "atomic_write_bytes", "sha256_file"]
