"""The device check: build, test and benchmark rrm_fast on a GPU machine; everything in one folder.

    make gpu-check                                   (= bash scripts/gpu_check.sh)
    bash scripts/gpu_check.sh [--out DIR] [--budget SECONDS] [--pack DIR]

Meant for a bare GPU machine (H100/H200 with CUDA torch and nvcc; no DALI, no internet, no
datasets) and a few minutes: the parts below fit in 8 minutes there (each has a cap; a part
that would overrun --budget is skipped and says so). Every part is a plain command whose
output goes to DIR/NN_<part>.log; DIR/summary.md and summary.json list each part's status,
time and key numbers, and the targets (benchmarks/floors.json, issue 17) met or missed.

  build      RRM_FAST_CUDA=1 python setup.py build_ext --inplace, for this GPU's arch
  info       python -m rrm_fast.info (versions, devices, which backend each op runs)
  tests      python -m pytest -m cuda tests (RRM_FAST_REQUIRE_EXT=1)
  feature_matching  benchmarks/bench_feature_matching.py: fused loss fwd+bwd vs eager and
             torch.compile, cosine, bf16 at B=4096 D=2048 and the demo's B=128 D=128
  pgd_step   benchmarks/bench_pgd_step.py: linf/l2 step vs eager and torch.compile at
             256x3x224x224 and 512x3x32x32, as a % of a device-to-device copy's bandwidth
  train      python -m rrm_fast.train: the demo's methods (RRM student, Fast-AT teacher) on
             the synthetic dataset, --amp, one epoch each
  eval       python -m rrm_fast.eval on that student (PGD, CE and margin losses)
  steps      python -m rrm_fast.bench steps: RRM step / (natural step + teacher forward)
  amp_step   benchmarks/bench_amp_step.py: ResNet-18 at CIFAR shape, channels_last + bf16
             autocast vs fp32, eager and torch.compile

Without a GPU it rehearses (CI runs it so, tests/test_gpu_check.py): build and tests are
reported as skipped (tests only collects the cuda-marked tests), and every other part runs
the same command on the CPU at tiny sizes, so no line of it runs for the first time on the
device. DIR defaults to benchmarks/results/gpu_<device name> on a GPU and runs/gpu_check_cpu
without one. --pack DIR also writes DIR/gpu_check.tar.gz and DIR/summary.md (for a machine
whose output folder takes few files).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # a bare GPU machine has no install of this checkout
from rrm_fast.io import atomic_write_json, atomic_write_text  # noqa: E402


@dataclass
class Part:
    """One part: its command on a GPU machine, and what the CPU rehearsal appends to it (argparse
    keeps the last value of an option, so the rehearsal parses every GPU flag too); cpu=None:
    skipped without a GPU."""

    name: str
    command: list[str]
    cpu: list[str] | None
    cap_s: int


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        return "9.0"  # not built without a GPU; a placeholder for the command line
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def parts(out: Path) -> list[Part]:
    """The check's parts, in order, with their caps in seconds on an H100/H200."""
    bench = ROOT / "benchmarks"
    build = ["env", "RRM_FAST_CUDA=1", f"TORCH_CUDA_ARCH_LIST={gpu_arch()}", f"MAX_JOBS={os.cpu_count()}",
             PY, "setup.py", "build_ext", "--inplace"]
    tests = [PY, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    if importlib.util.find_spec("xdist") is not None:  # the kernel tests compile ~100 Triton variants: in parallel
        tests[3:3] = ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    fm = [PY, str(bench / "bench_feature_matching.py"), "--device", "cuda", "--kinds", "cosine", "--dtypes", "bfloat16",
          "--shapes", "4096x2048,128x128", "--out", str(out / "feature_matching.md"),
          "--json", str(out / "feature_matching.json")]
    pgd = [PY, str(bench / "bench_pgd_step.py"), "--device", "cuda", "--ops", "linf_step", "l2_step",
           "--shapes", "256x3x224x224", "512x3x32x32", "--markdown", str(out / "pgd_step.md"),
           "--json", str(out / "pgd_step.json")]
    train = [PY, "-m", "rrm_fast.train", "--device", "cuda", "--amp", "--dataset", "synthetic", "--method", "rrm",
             "--student", "cnn_wide", "--teacher", "cnn_small", "--teacher-epochs", "1", "--head-init", "teacher",
             "--epochs", "1", "--batch-size", "128", "--test-size", "1000", "--monitor-size", "500",
             "--monitor-steps", "2", "--eval-steps", "10", "--out", str(out / "train"), "--no-progress"]
    evaluate = [PY, "-m", "rrm_fast.eval", str(out / "train" / "final.safetensors"), "--device", "cuda",
                "--steps", "10", "--test-size", "1000", "--diag-size", "200", "--out", str(out / "eval.json")]
    steps = [PY, "-m", "rrm_fast.bench", "steps", "--device", "cuda", "--reps", "20", "--out", str(out / "steps.md")]
    amp = [PY, str(bench / "bench_amp_step.py"), "--device", "cuda", "--out", str(out / "amp_step.md"),
           "--json", str(out / "amp_step.json")]
    cpu, quick_compile = ["--device", "cpu"], ["--compile-backend", "aot_eager"]
    return [
        Part("build", build, None, 240),
        Part("info", [PY, "-m", "rrm_fast.info"], [], 60),
        Part("tests", tests, ["--collect-only"], 200),
        Part("feature_matching", fm, [*cpu, "--shapes", "64x32", "--reps", "3", *quick_compile], 120),
        Part("pgd_step", pgd, [*cpu, "--shapes", "8x3x16x16", "--reps", "3", "--copy-mib", "16", *quick_compile], 120),
        Part("train", train, [*cpu, "--train-size", "256", "--batch-size", "64", "--test-size", "64",
                              "--monitor-size", "64", "--eval-steps", "2"], 120),
        Part("eval", evaluate, [*cpu, "--steps", "2", "--test-size", "64", "--diag-size", "0"], 90),
        Part("steps", steps, [*cpu, "--reps", "2", "--warmup", "1", "--batch-size", "16", "--pgd-steps", "1"], 90),
        Part("amp_step", amp, [*cpu, "--arch", "cnn_small", "--batch-size", "2", "--reps", "2", "--no-compile"], 180),
    ]


def run_part(part: Part, index: int, out: Path, on_gpu: bool, seconds_left: float, env: dict) -> dict:
    if not on_gpu and part.cpu is None:
        return {"status": "skipped", "reason": "no CUDA device", "seconds": 0.0}
    command = part.command if on_gpu else part.command + part.cpu
    log = out / f"{index:02d}_{part.name}.log"
    timeout = min(part.cap_s, seconds_left)
    if timeout < 15:
        return {"status": "skipped", "reason": f"time budget ({seconds_left:.0f} s left)", "seconds": 0.0}
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and every process it started
            proc.wait()
            rc = None
    seconds = time.time() - t0
    if rc is None:
        return {"status": "timeout", "reason": f"stopped after {timeout:.0f} s", "seconds": seconds, "log": log.name}
    status = "ok" if rc == 0 else "failed"
    if not on_gpu and status == "ok" and part.cpu:
        status = "rehearsed"  # ran on the CPU at rehearsal sizes: its numbers mean nothing for the GPU
    return {"status": status, "rc": rc, "seconds": seconds, "log": log.name, "command": " ".join(command)}


# ---------------------------------------------------------------------------------------------
# key numbers from each part's output
# ---------------------------------------------------------------------------------------------
def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def findings(out: Path, logs: dict) -> dict:
    """Key numbers from what the parts wrote (absent when a part did not write them)."""
    found = {}
    tests_log = logs.get("tests", "")
    m = re.findall(r"^=*\s*(\d+(?:/\d+ tests collected| (?:passed|failed|skipped|deselected|errors?)).*?)"
                   r"(?: in [\d.]+s.*)?$", tests_log, re.M)
    if m:
        found["tests"] = m[-1].strip("= ")
    fm = _load(out / "feature_matching.json")
    for r in (fm or {}).get("rows", []):
        if r["variant"] == "fused":
            found[f"fused loss {r['B']}x{r['D']} {r['dtype']}"] = {
                "x_eager": r["x_eager"], "x_compiled": r["x_compiled"], "gbps": r["gbps"], "clock": r["clock"]}
    pgd = _load(out / "pgd_step.json")
    if pgd:
        found["copy GB/s"] = pgd["copy"]["gbps"]
        for r in pgd["rows"]:
            if r["variant"] == "fused":
                found[f"{r['op']} {r['shape']}"] = {"pct_of_copy": r["pct_of_copy"], "x_eager": r["x_eager"],
                                                    "x_compiled": r["x_compiled"], "clock": r["clock"]}
    steps = _load(out / "steps.json")
    if steps:
        found["rrm / (natural + teacher forward)"] = steps["ratios"]["rrm_vs_natural_plus_teacher"]
    amp = _load(out / "amp_step.json")
    if amp:
        found.update({f"amp {k}": v for k, v in amp["ratios"].items()})
    train = _load(out / "train" / "report.json")
    if train:
        found["train test"] = {k: train.get("test", {}).get(k) for k in ("clean_acc", "robust_acc", "n")}
    ev = _load(out / "eval.json")
    if ev:
        found["eval"] = {k: ev.get(k) for k in ("clean_acc", "robust_acc")}
    return found


def targets(found: dict, on_gpu: bool) -> list[dict]:
    """Issue 17's acceptance figures and benchmarks/floors.json's CUDA floors, met or not."""
    floors = _load(ROOT / "benchmarks" / "floors.json") or {}
    rows = []

    def check(what, key, field_name, floor):
        value = (found.get(key) or {}).get(field_name)
        status = "not measured" + ("" if on_gpu else " (no GPU)") if value is None else ("met" if value >= floor else "MISSED")
        rows.append({"target": what, "value": value, "floor": floor, "status": status})

    check("fused loss fwd+bwd vs eager, B=4096 D=2048 bf16", "fused loss 4096x2048 bfloat16", "x_eager",
          floors.get("feature_matching_fused_vs_eager", {}).get("cuda", 3.0))
    for shape in ("256x3x224x224", "512x3x32x32"):
        check(f"linf_step % of copy bandwidth, {shape}", f"linf_step {shape}", "pct_of_copy", 80.0)
    check("linf_step vs eager, 512x3x32x32", "linf_step 512x3x32x32", "x_eager",
          floors.get("linf_step_vs_eager", {}).get("cuda", 4.0))
    check("l2_step vs eager, 512x3x32x32", "l2_step 512x3x32x32", "x_eager",
          floors.get("l2_step_vs_eager", {}).get("cuda", 3.0))
    return rows


def write_summary(out: Path, header: dict, results: dict, found: dict, goals: list[dict]) -> None:
    atomic_write_json(out / "summary.json", {**header, "parts": [{"name": n, **r} for n, r in results.items()],
                                             "findings": found, "targets": goals})
    lines = [f"# rrm_fast device check: {header['device']}", "",
             f"{header['date']}; {header['python']}; torch {header['torch']}; triton {header['triton']}; "
             f"whole check {header['seconds']:.0f} s of a {header['budget_s']} s budget.", "",
             "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, r in results.items():
        note = r.get("reason") or r.get("log", "")
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {note} |")
    lines += ["", "| target | value | floor | status |", "|---|---:|---:|---|"]
    for g in goals:
        value = "-" if g["value"] is None else f"{g['value']:.2f}"
        lines.append(f"| {g['target']} | {value} | {g['floor']:g} | {g['status']} |")
    lines += ["", "Key numbers (JSON):", "", "```", json.dumps(found, indent=1, default=str), "```", ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def pack(out: Path, dest: Path) -> None:
    """dest/gpu_check.tar.gz (the whole folder but model weights) and dest/summary.md."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=lambda ti: None if ti.name.endswith(".safetensors") else ti)
    shutil.copy(out / "summary.md", dest / "summary.md")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/gpu_<device>, "
                                            "or runs/gpu_check_cpu without a GPU)")
    p.add_argument("--budget", type=int, default=460, help="seconds for all parts together (default 460: the check and its start fit 8 minutes)")
    p.add_argument("--pack", type=Path, help="also write gpu_check.tar.gz and summary.md into this folder")
    args = p.parse_args(argv)
    import torch
    import triton

    name = gpu_name()
    out = args.out or (ROOT / "benchmarks" / "results" / f"gpu_{slug(name)}" if name else ROOT / "runs" / "gpu_check_cpu")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1", RRM_FAST_CACHE=str(out / "cache"), RRM_FAST_REQUIRE_EXT="1" if name else "0")
    if not shutil.which("nvcc") and "CUDA_HOME" not in env and Path("/usr/local/cuda/bin/nvcc").exists():
        env.update(CUDA_HOME="/usr/local/cuda", PATH=f"/usr/local/cuda/bin{os.pathsep}{env.get('PATH', '')}")
    t0 = time.time()
    results = {}
    if not kernels_importable(env):
        link_kernels_package()
    if name and shutil.which("nvidia-smi"):
        atomic_write_text(out / "nvidia-smi.txt", subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
    for i, part in enumerate(parts(out), 1):
        results[part.name] = run_part(part, i, out, name is not None, args.budget - (time.time() - t0), env)
        print(f"gpu_check: {part.name:17s} {results[part.name]['status']:9s} {results[part.name]['seconds']:6.0f} s"
              + (f"  ({results[part.name].get('reason')})" if results[part.name].get("reason") else ""), flush=True)
    logs = {n: (out / r["log"]).read_text(errors="replace") for n, r in results.items() if r.get("log")}
    found = findings(out, logs)
    goals = targets(found, name is not None)
    header = {"device": name or "no GPU (CPU rehearsal)", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "python": f"Python {sys.version.split()[0]}", "torch": torch.__version__, "triton": triton.__version__,
              "seconds": time.time() - t0, "budget_s": args.budget}
    write_summary(out, header, results, found, goals)
    print((out / "summary.md").read_text())
    if args.pack:
        pack(out, args.pack)
    return 1 if any(r["status"] in ("failed", "timeout") for r in results.values()) else 0


def kernels_importable(env: dict) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('rrm_fast.kernels') is None)"
    return subprocess.run([PY, "-c", probe], cwd=ROOT, env=env).returncode == 0


def link_kernels_package() -> None:
    """Without an install (a bare GPU machine builds in place), nothing maps rrm_fast.kernels to
    kernels/ as the editable install does: link it, as the development checkouts do."""
    link = ROOT / "rrm_fast" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels")


if __name__ == "__main__":
    sys.exit(main())
