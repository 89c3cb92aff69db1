"""A clean install works: a fresh venv WITHOUT the system's site packages gets the pinned CPU
torch first (as scripts/setup.sh installs it), then plain ``pip install --no-build-isolation -e
REPO`` -- no setup script -- must bring every package rrm_fast imports (setup.py's
install_requires); then ``python -m rrm_fast.train --help`` and a 1-epoch synthetic run.

The repository is installed from a temporary copy of its files (tracked, or new and not
ignored), so the editable install never points a shared environment at this checkout.

Cost: creating the venv with torch and the dependencies takes minutes, so the venv is kept
between runs under ~/.cache/rrm_fast/test-venvs/<key> ($RRM_FAST_TEST_VENVS overrides the
folder; the suite's $RRM_FAST_CACHE is a fresh temporary one), where the key hashes setup.py's
install_requires, the Python and the torch version. It stays a clean-venv test: a venv is
only ever created by these same steps from nothing, a changed requirement list gets a new
one, and rrm_fast itself is installed afresh from the copy on every run (a missing
requirement still fails: the venv holds only what install_requires named when it was made).
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from helpers import REPO

TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"


def install_requires() -> list[str]:
    """setup.py's install_requires, read without running setup.py."""
    for node in ast.walk(ast.parse((REPO / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no install_requires")


def clean_env() -> dict:
    """The caller's environment without anything that points Python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(cmd, cwd, timeout=1200) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def copy_of_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def clean_venv(cwd: Path) -> Path:
    """A venv without system site packages holding the pinned torch (made once per key)."""
    key = hashlib.sha256(json.dumps([install_requires(), platform.python_version(), TORCH_PIN]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("RRM_FAST_TEST_VENVS", Path.home() / ".cache" / "rrm_fast" / "test-venvs"))
    venv = cache / f"venv-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one test run builds it; a concurrent one waits
        if not (venv / "created").exists():
            shutil.rmtree(venv, ignore_errors=True)
            run([sys.executable, "-m", "venv", venv], cwd)
            run([venv / "bin" / "python", "-m", "pip", "install", "-q", TORCH_PIN], cwd)
            (venv / "created").write_text(TORCH_PIN + "\n")
    return venv


@pytest.mark.slow
def test_a_clean_venv_installs_with_plain_pip_and_trains(tmp_path):
    venv = clean_venv(tmp_path)
    python = venv / "bin" / "python"
    paths = json.loads(run([python, "-c", "import json, sys; print(json.dumps(sys.path))"], tmp_path).stdout)
    outer = sysconfig.get_paths()["purelib"]  # where this interpreter's packages (and torch) live
    assert outer not in paths and any(p.startswith(str(venv)) for p in paths), paths
    repo = copy_of_repo(tmp_path / "repo")
    run([python, "-m", "pip", "install", "-q", "--no-build-isolation", "-e", repo], tmp_path)
    where = run([python, "-c", "import rrm_fast; print(rrm_fast.__file__)"], tmp_path).stdout
    assert where.startswith(str(repo)), where  # the copy, not this checkout
    help_text = run([python, "-m", "rrm_fast.train", "--help"], tmp_path).stdout
    assert "--batch-size" in help_text and "--resolution" in help_text
    out = tmp_path / "run"
    run([python, "-m", "rrm_fast.train", "--method", "natural", "--dataset", "synthetic", "--epochs", "1",
         "--train-size", "256", "--test-size", "64", "--monitor-size", "64", "--monitor-steps", "1", "--eval-steps", "1",
         "--no-progress", "--out", out], tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "synthetic" and report["epochs_run"] == 1 and report["test"]["n"] == 64
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard came with the install
