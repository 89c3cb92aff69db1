"""`make gpu-check` rehearsed on the CPU: every part runs (GPU-only ones reported as skipped), so the
device check tries nothing for the first time on the device. ~60 s on 2 idle cores."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARTS = ("build", "info", "tests", "feature_matching", "pgd_step", "train", "eval", "steps", "amp_step")


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run `make gpu-check` itself (it takes minutes)")
    out, packed = tmp_path / "results", tmp_path / "packed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out), "--pack", str(packed)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = {part["name"]: part for part in summary["parts"]}
    status = {name: part["status"] for name, part in parts.items()}
    assert tuple(status) == PARTS
    assert status["build"] == "skipped" and parts["build"]["reason"] == "no CUDA device"
    assert status["info"] == "ok"
    assert all(status[p] == "rehearsed" for p in PARTS[2:]), status
    found = summary["findings"]
    collected, total = (int(v) for v in found["tests"].split()[0].split("/"))
    assert 0 < collected < total, found["tests"]  # the cuda marker selects some tests, not all
    for key in ("fused loss 64x32 bfloat16", "linf_step 8x3x16x16", "l2_step 8x3x16x16", "copy GB/s",
                "rrm / (natural + teacher forward)", "amp cl_bf16_vs_fp32_eager", "train test", "eval"):
        assert key in found, f"{key} missing from the findings: {sorted(found)}"
    assert found["eval"]["clean_acc"] is not None
    assert all(t["status"] == "not measured (no GPU)" for t in summary["targets"]), summary["targets"]
    with tarfile.open(packed / "gpu_check.tar.gz") as tar:
        names = tar.getnames()
    assert "results/summary.md" in names and "results/pgd_step.json" in names
    assert not any(n.endswith(".safetensors") for n in names), "model weights in the packed results"
    assert (packed / "summary.md").read_text() == (out / "summary.md").read_text()
