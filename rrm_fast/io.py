"""File I/O that survives a crash, Ctrl-C or a full disk: the one place for atomic writes,
fsync and sha256.

Every file rrm_fast writes goes through ``atomic_replace``: a temporary name in the same
directory, flushed, fsynced and renamed over the target, then the directory fsynced. A crash
at any moment leaves either the old file or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_replace(path):
    """Yield a temporary file name next to ``path`` for the caller to write; on success fsync it,
    rename it over ``path`` and fsync the directory, so a crash leaves the old file or the new one.
    On any exception (Ctrl-C included) the temporary file is removed."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a directory, a device (/dev/full), a FIFO: never replaced
        raise ValueError(f"{path} exists and is not a regular file; refusing to replace it - write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_replace(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_writable_place(path, what: str) -> None:
    """Before any work is done: ``path`` (a file or folder still to be written) can be created
    where it is - its nearest existing ancestor is a directory this process may write in.
    ValueError naming ``what`` (the flag) otherwise."""
    path = Path(path)
    ancestor = path if path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path}: {ancestor} is not a directory, so nothing can be created under it; "
                         "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {ancestor}; choose another path")


def check_output_dir(path, what: str) -> None:
    """Before any work: ``path`` is a directory, or one that can be created (see check_writable_place)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory; name a new or existing directory")
    check_writable_place(path, what)


def check_output_file(path, what: str) -> None:
    """Before any work: ``path`` is a regular file, or one that can be created (see check_writable_place)."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ValueError(f"{what} {path} exists and is not a regular file (a directory, a device); name a file")
    check_writable_place(path, what)


def fsync_dir(path) -> None:
    """Make a rename durable (the directory entry), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
