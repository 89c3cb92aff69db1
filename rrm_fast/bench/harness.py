"""What the training benchmarks share (``claims`` and ``compare``): budgets, method selection,
the trainer's evaluation flags (the honest pair by default, the standard suite on a stated
subset), training each method once through the one trainer (or reusing a finished run), the clock
the epochs are timed with, and the machine and load the runs saw.

A run is reused when its directory holds a report.json written with exactly the same
settings (config.json) and a ``harness_run.json`` record timed with the same clock; the
record keeps the run's wall time, when it ran, the load during it and its torch threads, so
a re-rendered table still shows each run's own conditions.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from ..io import atomic_write_json, atomic_write_text
from ..methods import METHODS
from ..eval.attack_sets import ATTACK_SETS
from ..train import TrainConfig, train_run
from ..validation import whole_number
from . import timing
from .machine import LoadSampler, describe_machine, summary

RUN_RECORD = "harness_run.json"
CLOCK_CHOICES = ("auto", *timing.CLOCKS, "cpu")  # "cpu": the thread clock's earlier name


def add_run_arguments(p: argparse.ArgumentParser, clock_default: str) -> None:
    """The flags every harness takes: threads, clock, progress bars."""
    p.add_argument("--threads", type=whole_number, default=None,
                   help="torch intra-op threads for every run (default: torch's). On a loaded shared CPU, 1 can be "
                        "much faster than 2: OpenMP's barrier waits for a descheduled thread")
    p.add_argument("--clock", choices=CLOCK_CHOICES, default=clock_default,
                   help="what times the epochs: thread = the computing thread's CPU time (CPU, --threads 1 only: the "
                        "machine-alone time, immune to other jobs' load), wall = wall-clock; auto = thread where "
                        "possible, else wall")
    p.add_argument("--progress", action="store_true", help="progress bars for each run")


EVAL_BUDGET_HELP = {
    "eval_steps": "steps (PGD) or iterations (APGD) of the final test attacks; none given: the set's own (50 for the "
                  "APGD sets, 20 for PGD)",
    "standard_size": "run the standard suite (APGD-CE-100 -> APGD-T-100x9 -> Square) on the first N test images beside "
                     "the final figure (0: no)",
    "standard_queries": "Square queries per image of that standard suite (docs/evaluation.md: Square-5000 fooled no "
                        "image APGD-CE and APGD-T had failed on, for three models, so 1000 is a measured cut for a CPU)"}


def add_eval_arguments(p: argparse.ArgumentParser, full: dict, quick: dict) -> None:
    """The trainer's evaluation settings, as every training harness takes them: the final
    figure's attack set, the held-out monitor's, and the budget-sized ones (EVAL_BUDGET_HELP)
    whose defaults come from the harness's FULL / QUICK budgets."""
    cfg = TrainConfig()
    p.add_argument("--eval-attacks", choices=ATTACK_SETS, default=cfg.eval_attacks,
                   help="attack set of the final test figure: the per-sample worst case over a CE and a margin attack "
                        f"(default {cfg.eval_attacks}; pgd-ce is CE-only PGD, a quick check that soft logits fool)")
    p.add_argument("--monitor-attacks", choices=ATTACK_SETS, default=cfg.monitor_attacks,
                   help=f"attack set of the per-epoch held-out curve points (default {cfg.monitor_attacks})")
    p.add_argument("--monitor-steps", type=whole_number, default=cfg.monitor_steps,
                   help=f"attack steps of the held-out curve points (default {cfg.monitor_steps})")
    for key, words in EVAL_BUDGET_HELP.items():
        p.add_argument("--" + key.replace("_", "-"), type=whole_number, default=None,
                       help=f"{words}; default {_shown(full[key])} ({_shown(quick[key])} with --quick)")


def _shown(value) -> str:
    return "the set's" if value is None else str(value)


def eval_settings(args) -> dict:
    """The TrainConfig fields of add_eval_arguments' flags that no budget sizes."""
    return dict(eval_attacks=args.eval_attacks, monitor_attacks=args.monitor_attacks, monitor_steps=args.monitor_steps)


def budget(args, full: dict, quick: dict) -> dict:
    """Each budget key from its flag when given, else from --quick's budget or the full one."""
    base = quick if args.quick else full
    return {k: getattr(args, k) if getattr(args, k, None) is not None else base[k] for k in base}


def select_methods(spec: str, every: tuple, variants=()) -> list[str]:
    """Method (or variant) names from a comma-separated list, or ``every`` for 'all'."""
    names = list(every) if spec.strip() == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS and m not in variants]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(sorted(METHODS) + list(variants))} or 'all'")
    if not names:
        raise ValueError("--methods is empty; name at least one method")
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``n`` intra-op threads inside the block (if given); a library caller's setting survives it."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"--threads must be >= 1 (got {n})")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_clock(name: str, device) -> str:
    return timing.resolve_clock("thread" if name == "cpu" else name, device)


def reusable_report(cfg: TrainConfig) -> dict | None:
    """The report of a finished run with exactly this config, else None."""
    out = Path(cfg.out)
    try:
        old_cfg = json.loads((out / "config.json").read_text())
        report = json.loads((out / "report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return report if old_cfg == json.loads(json.dumps(dataclasses.asdict(cfg))) else None


def replays_of(cfg: TrainConfig) -> int:
    """How many times the run's method replays each minibatch (Free AT's m; 1 for the others)."""
    opts = METHODS[cfg.method].options
    return int(cfg.method_options.get("replays", opts["replays"].default)) if "replays" in opts else 1


def run_or_reuse(name: str, cfg: TrainConfig, *, clock: str, progress: bool = False, callbacks=(),
                 tag: dict | None = None) -> dict:
    """{"report", "wall_seconds", "started", "started_epoch", "load", "torch_threads", "clock", "reused"}.
    ``tag``: what else the run depended on beyond its config (a time budget a callback enforced);
    a finished run is reused only when it was recorded with the same tag."""
    report = reusable_report(cfg)
    record_path = Path(cfg.out) / RUN_RECORD
    if report is not None and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("clock") == clock and record.get("tag") == tag:
            print(f"== {name}: reusing the finished run in {cfg.out}")
            return {"report": report, **record, "reused": True}
    print(f"== {name}", flush=True)
    started, started_epoch = time.strftime("%Y-%m-%d %H:%M:%S"), time.time()
    with LoadSampler(interval=15.0) as load:
        t0 = time.perf_counter()
        report = train_run(cfg, progress=progress, exist_ok=True, clock=timing.clock(clock), callbacks=callbacks)
        wall = time.perf_counter() - t0
    record = {"wall_seconds": wall, "started": started, "started_epoch": started_epoch, "load": load.stats(),
              "torch_threads": torch.get_num_threads(), "clock": clock, "tag": tag, "reused": False}
    atomic_write_json(record_path, record)
    return {"report": report, **record}


def read_curve(metrics_path: Path) -> list[dict]:
    """(cumulative training seconds, held-out clean/robust accuracy) at each epoch end."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    t, curve = 0.0, []
    for r in rows:
        t += r["epoch_seconds"]
        curve.append({"epoch": r["epoch"], "seconds": t, "clean": r["heldout_clean_acc"],
                      "robust": r["heldout_robust_acc"], "attack": r.get("heldout_attack")})
    return curve


def run_span(run: dict) -> tuple[float, float]:
    """(start, end) of a run in seconds since the epoch."""
    start = run.get("started_epoch") or time.mktime(time.strptime(run["started"], "%Y-%m-%d %H:%M:%S"))
    return start, start + run["wall_seconds"]


def merge_loads(loads: list[dict]) -> dict:
    """One load summary for several runs: extremes over all, median of the runs' medians."""
    return {"cores": loads[0]["cores"], "start": loads[0]["start"], "end": loads[-1]["end"],
            "min": min(x["min"] for x in loads), "median": round(statistics.median(x["median"] for x in loads), 2),
            "max": max(x["max"] for x in loads), "samples": sum(x["samples"] for x in loads),
            "interval_s": loads[0]["interval_s"]}


def session(runs: list[dict], device) -> dict:
    """The machine the runs used (with the torch threads they ran with) and their load:
    {"machine", "load", "started", "finished", "wall_seconds", "first", "last"}."""
    machine = describe_machine(device)
    machine.pop("loadavg")  # this process's moment; the runs' load is below
    threads = {r.get("torch_threads") for r in runs} - {None}
    if len(threads) == 1:  # the threads the runs used, not this (possibly re-rendering) process's
        machine["torch_threads"] = threads.pop()
        machine["summary"] = summary(machine)
    spans = [run_span(r) for r in runs]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    return {"machine": machine, "load": merge_loads([r["load"] for r in runs]), "first": first, "last": last,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first)),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)), "wall_seconds": last - first}


def write_results(out: Path, stem: str, res: dict, md: str, plots=()) -> None:
    """A harness's result: OUT/STEM.json and OUT/STEM.md (atomically), the table printed, and
    where everything went (``plots``: files the caller already wrote)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", res)
    atomic_write_text(out / f"{stem}.md", md)
    print(md)
    print("-> " + ", ".join(str(p) for p in (out / f"{stem}.json", out / f"{stem}.md", *plots)))
