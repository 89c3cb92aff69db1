"""Checkpoints: safetensors weights + a JSON sidecar (model spec, run info, checksum).

Never pickles. Every file is written through rrm_fast.io (temporary name, fsync, rename), so
a crash or Ctrl-C leaves either the old file or the new one.
The JSON records the sha256 of the weights file; loading verifies it.

Weights from elsewhere (``load_weights_into``): safetensors, or a legacy ``.pt``/``.pth``
read with ``torch.load(..., weights_only=True)`` only - a pickle that needs code to load is
refused. RobustBench-, timm-, torchvision- and robustness-library-style key layouts are
mapped onto the zoo's (see ``adapt_state_dict``).
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_replace, atomic_write_json, sha256_file
from .models import FeatureClassifier, create_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match what it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code (or import classes) to load; never executed here."""


CONVERT_HINT = ("If you trust the file, convert it once: python -c 'import torch; from safetensors.torch import save_file; "
                "o = torch.load(\"{path}\", weights_only=False); "
                "sd = o.state_dict() if hasattr(o, \"state_dict\") else o.get(\"state_dict\", o); "
                "save_file({{k: v.contiguous() for k, v in sd.items()}}, \"{out}\")' (only for files you trust)")


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


def write_tensor_file(path, tensors: dict) -> str:
    """Atomically write ``tensors`` as a safetensors file; returns its sha256."""
    with atomic_replace(path) as tmp:
        save_file(_tensors_for_save(tensors), tmp)
        digest = sha256_file(tmp)
    return digest


def save_model(path, model, meta: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    digest = write_tensor_file(path, model.state_dict())
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
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON ({getattr(e, 'msg', e)}); the file is "
                              "corrupt") from None
    try:
        check_spec(meta["model"] if isinstance(meta, dict) and "model" in meta else None)
    except ValueError as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} does not describe an rrm_fast model ({e}); it is not "
                              f"the sidecar {path.name} was written with - restore it from the run directory") from None
    return meta


def check_spec(spec) -> None:
    """A sidecar's "model" entry: the architecture and the sizes build_model needs, of the right types."""
    from .models import ARCHS
    from .validation import Range, check_value

    check_value("model", spec, dict)
    check_value("model.arch", spec.get("arch"), str, choices=tuple(ARCHS))
    for key in ("num_classes", "in_channels"):
        check_value(f"model.{key}", spec.get(key), int, bounds=Range(ge=1, le=1 << 20))
    for key in ("image_size", "feature_dim"):
        check_value(f"model.{key}", spec.get(key), int | None, bounds=Range(ge=1, le=1 << 20))
    for key in ("mean", "std"):
        stats = check_value(f"model.{key}", spec.get(key), list)
        if len(stats) not in (1, spec["in_channels"]):
            raise ValueError(f"model.{key} has {len(stats)} values for {spec['in_channels']} channels")
        for v in stats:
            check_value(f"model.{key}", v, float)


def load_state(path, verify: bool = True) -> tuple[dict, dict]:
    path = Path(path)
    meta = read_meta(path)
    if verify and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (truncated or corrupt, or its sidecar belongs to another file); use an earlier checkpoint or retrain")
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
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in model.state_dict().items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        spec = meta["model"]
        raise CheckpointError(f"checkpoint {path}: its sidecar describes {spec['arch']} with {spec['num_classes']} classes "
                              f"and {model.feature_dim}-d features, but the weights have other shapes ({', '.join(wrong[:3])}); "
                              "the sidecar belongs to another checkpoint - restore it from the run directory")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {meta['model']['arch']}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- weights from elsewhere
LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
PREFIXES = ("module.", "model.", "_orig_mod.")
HEAD_NAMES = ("linear", "classifier", "head", "last_linear", "logits", "fc")
NORM_MEAN_KEYS = ("normalizer.new_mean", "normalize.mean", "mu", "mean")
NORM_STD_KEYS = ("normalizer.new_std", "normalize.std", "sigma", "std")


def _unsupported_global(message: str) -> str | None:
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice",
                        "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray", "_codecs.encode")


def pickle_globals(path) -> list[str]:
    """The classes/functions a pickle (or a torch zip checkpoint's data.pkl) would import, read
    with pickletools' opcode parser - which never executes anything."""
    import io
    import pickletools
    import zipfile

    streams = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            streams = [io.BytesIO(z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
    else:
        streams = [io.BytesIO(Path(path).read_bytes())]
    found = []
    for f in streams:
        while True:  # a legacy torch file is several pickles back to back
            strings = []
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # not (or no longer) a pickle: stop reading this stream
                break
            if f.tell() >= len(f.getbuffer()):
                break
    return found


def read_state_dict(path) -> dict:
    """A flat {name: tensor} from a safetensors file or a legacy torch pickle, never running
    code: ``.pt``/``.pth`` go through ``torch.load(weights_only=True)``, which only rebuilds
    tensors and plain containers. A wrapper dict ({"state_dict": ...}, {"model": ...}) is
    unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        if path.with_suffix(".json").exists():
            return load_state(path)[0]
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}); the file is corrupt") from None
    if path.suffix not in LEGACY_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix!r}; pass a .safetensors file or a "
                              f"torch state dict ({', '.join(LEGACY_SUFFIXES)})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = _unsupported_global(str(e)) or next(
            (g for g in pickle_globals(path) if not g.startswith(SAFE_GLOBAL_PREFIXES)), None)
        out = path.with_suffix(".safetensors")
        if needed:
            raise UnsafeCheckpointError(
                f"{path} is a pickle that needs code to load (it references {needed}); rrm_fast never runs code from "
                "checkpoints. " + CONVERT_HINT.format(path=path, out=out)) from None
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0][:120]}); "
                              "the file is corrupt or not a state dict") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}); the file is corrupt or truncated") from None
    return _unwrap(obj, path)


def _unwrap(obj, path) -> dict:
    for _ in range(4):  # {"state_dict": {"model": {...}}} and the like
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if tensors:
                    return tensors
                break
            obj = inner
        else:
            break
    raise CheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__}"
                          f"{' with keys ' + str(sorted(obj)[:6]) if isinstance(obj, dict) else ''}); "
                          "save model.state_dict() instead")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _renames(key: str, model) -> list[str]:
    """Names ``key`` may have in the zoo's layout, most literal first."""
    out = [key]
    k = re.sub(r"^layer(\d+)\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)  # torchvision/kuangliu ResNets
    k = k.replace(".downsample.", ".shortcut.").replace(".convShortcut.", ".shortcut.")
    blocks = getattr(getattr(model, "backbone", None), "blocks", None)
    if blocks is not None:  # RobustBench / TRADES WideResNet: block{k}.layer.{j} -> blocks.{(k-1)*n + j}
        per_group = len(blocks) // 3
        k = re.sub(r"^block(\d+)\.layer\.(\d+)\.",
                   lambda m: f"blocks.{(int(m.group(1)) - 1) * per_group + int(m.group(2))}.", k)
    head = k.split(".", 1)
    if head[0] in HEAD_NAMES and len(head) == 2:
        k = "fc." + head[1]
    out.append(k)
    if re.search(r"\.shortcut\.0\.weight$", k):  # a conv-only shortcut stored as Sequential(conv)
        out.append(k.replace(".shortcut.0.weight", ".shortcut.weight"))
    for final_bn in ("bn.", "bn1."):  # the last BatchNorm of pre-activation nets
        if k.startswith(final_bn):
            out += ["final_bn." + k[len(final_bn):], "bn." + k[len(final_bn):]]
    return out + ["backbone." + c for c in out if not c.startswith(("fc.", "proj.", "normalize."))]


def adapt_state_dict(state: dict, model) -> tuple[dict, list[str], list[str], list[str]]:
    """Map an external state dict onto ``model``'s keys.

    Strips ``module.``/``model.`` prefixes, drops the robustness library's duplicate
    ``attacker.*`` copy, maps ``linear.*``/``classifier.*``/``head.*`` onto ``fc.*`` and
    ``layerN.*``/``blockN.layer.*`` onto the zoo's backbone names - each rename only where the
    target exists with the same shape. Input normalisation statistics in the file
    (``normalizer.new_mean``, ``mu``, ...) replace the dataset's; otherwise the model keeps
    the dataset's. Returns (mapped, missing, unexpected, shape_mismatches).
    """
    target = model.state_dict()
    mapped: dict = {}
    unexpected, mismatched = [], []
    for raw_key, value in state.items():
        key = _strip_prefixes(raw_key)
        if key.startswith("attacker."):
            continue
        if key in NORM_MEAN_KEYS or key in NORM_STD_KEYS:
            dest = "normalize.mean" if key in NORM_MEAN_KEYS else "normalize.std"
            if dest in target and value.numel() == target[dest].numel():
                mapped[dest] = value.reshape(target[dest].shape)
                continue
        present = [c for c in _renames(key, model) if c in target and c not in mapped]
        fitting = [c for c in present if tuple(target[c].shape) == tuple(value.shape)]
        if fitting:
            mapped[fitting[0]] = value
        elif present:
            mismatched.append(f"{raw_key} {tuple(value.shape)} vs {present[0]} {tuple(target[present[0]].shape)}")
        else:
            unexpected.append(raw_key)
    optional = ("normalize.mean", "normalize.std")
    missing = [k for k in target if k not in mapped and not k.startswith(optional) and not k.endswith("num_batches_tracked")]
    return mapped, missing, unexpected, mismatched


def fit_state_dict(model, state: dict, source="the state dict") -> dict:
    """Load an external ``state`` into ``model`` through ``adapt_state_dict``; CheckpointError
    naming the missing, unexpected and mis-shaped keys when it does not fit."""
    mapped, missing, unexpected, mismatched = adapt_state_dict(state, model)
    if missing or unexpected or mismatched:
        arch = getattr(model, "spec", {}).get("arch", type(model).__name__)
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes {mismatched[:4]}")
        if missing:
            parts.append(f"{len(missing)} missing {missing[:6]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected {unexpected[:6]}")
        raise CheckpointError(f"{source} does not fit architecture {arch}: keys " + "; ".join(parts) +
                              "; check --teacher-arch (and the dataset's class count)")
    with torch.no_grad():
        model.load_state_dict(mapped, strict=False)
    return mapped


def load_weights_into(model, path) -> dict:
    """Load the weights at ``path`` into ``model`` (a zoo model of the matching architecture).

    Accepts rrm_fast checkpoints, bare safetensors files and legacy torch state dicts (read
    with weights_only=True), in the zoo's or a RobustBench/timm/torchvision-style layout.
    Raises CheckpointError naming the missing, unexpected and mis-shaped keys when the file
    does not fit. Returns the mapped state dict that was loaded.
    """
    return fit_state_dict(model, read_state_dict(path), path)


def head_classes(state: dict) -> int | None:
    """The class count of the classifier in an external state dict, when recognisable."""
    for raw_key, value in state.items():
        name = _strip_prefixes(raw_key).split(".", 1)
        if len(name) == 2 and name[0] in HEAD_NAMES and name[1] == "weight" and value.dim() == 2:
            return int(value.shape[0])
    return None


__all__ = ["CheckpointError", "UnsafeCheckpointError", "save_model", "load_model", "load_state", "read_meta",
           "build_model", "write_tensor_file",
           "read_state_dict", "adapt_state_dict", "fit_state_dict", "load_weights_into", "head_classes"]
