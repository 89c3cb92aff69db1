"""Step-level benchmark: what one training step of each method costs, for the same student.

    python -m rrm_fast.bench steps                                   # demo shapes: cnn_wide, batch 128, 28x28
    python -m rrm_fast.bench steps --reps 30 --pgd-steps 7,10 --out benchmarks/results/steps_cpu.md

Everything is measured in one process, round-robin (each round times every item once, in
turn, starting one item later each round), after warm-up rounds; medians over the rounds.
So load from other processes on a shared machine falls on all items alike and the ratios
below compare numbers from the same minutes. ``--threads 1 --clock thread`` times the CPU
work of the one computing thread instead of wall time: on a loaded machine, the fair figure.

Items (the student is the demo's: ``cnn_wide``, with RRM's projection to the teacher's phi
width when the widths differ, and the teacher's head copied in; the same student for every
method; channels_last
as the trainer's default; fp32; SGD momentum 0.9, wd 5e-4; one real Fashion-MNIST batch
from the device loader, as the trainer feeds it):

  natural          one training step on clean x: forward, CE, backward, SGD step
  teacher_forward  the frozen teacher's no-grad forward returning (logits, phi), as RRM calls it
  rrm              one step of the paper's RRM (--student-delta none --feature-loss auto):
                   teacher forward + student forward with phi + CE + cosine feature loss +
                   backward + SGD step (the trainer's sequence, rrm_fast.methods.rrm)
  rrm_variant      one step of --method rrm's defaults, this project's variant: the batch's
                   per-image deltas gathered, the same passes on x + delta with rel_l2, the
                   input gradient kept and the deltas stepped and stored
  attack_pass      one PGD iteration's unavoidable work: forward of x + delta and the backward
                   to delta only (no weight gradients), Attack.input_grad
  pgd_at_k         one PGD-AT step: random start, k iterations, then the training step
  no_grad_forward  a no-grad forward of the student (explains PGD's overhead, see below)
  linf_step_op     the in-place L-inf step on delta (rrm_fast.ops.linf_step_; explains the rest)

Ratios:
  rrm_variant / rrm                        what the variant adds to the paper's step.
  rrm / (natural + teacher_forward)        RRM's premise is that a step costs natural training
                                           plus one teacher forward. Acceptance on CPU: <= 1.10.
  pgd_at_k / (k * attack_pass + natural)   PGD-AT against its ideal: k forward+input-backward
                                           passes plus one training step and nothing else (no
                                           random init, no step op, no extra forward). Also
                                           shown: pgd_at_k / natural against the naive (k+1).

Writes a Markdown report (--out) and a JSON file next to it (same stem).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attacks import ce_per_sample
from ..errors import OneLineArgumentParser
from ..io import atomic_write_text, check_output_file
from ..methods import METHODS, ThreatModel
from ..models import attach_projection, copy_head, create_model
from ..runtime import resolve_device
from ..train import Trainer
from ..validation import whole_number
from .machine import LoadSampler, describe_load, describe_machine
from .timing import CLOCKS, check_clock, interleaved_times, per_round_median

PAPER_RRM = {"student_delta": "none", "feature_loss": "auto"}  # the paper's RRM (the rrm item and its premise)
RRM_ACCEPTANCE = 1.10  # issue 8: RRM step <= 1.10 x (natural step + teacher forward) on CPU


@dataclass
class StepSetup:
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    calls: dict            # name -> zero-argument callable doing one timed unit of work
    pgd_steps: tuple
    description: dict      # shapes, models, data source


def demo_batch(batch_size: int, device: torch.device, channels_last: bool, seed: int = 0):
    """A real Fashion-MNIST training batch from the device loader (what the trainer feeds);
    the synthetic 28x28 set when Fashion-MNIST is not installed (same shapes, same cost)."""
    from ..data import DatasetError, load_dataset, make_loader

    try:
        ds = load_dataset("fashion_mnist", "train")
        source = "fashion_mnist"
    except (DatasetError, ValueError, OSError):
        ds = load_dataset("synthetic", "train")
        source = "synthetic (Fashion-MNIST not installed)"
    ds = ds.subset(torch.arange(min(len(ds), 4 * batch_size)))
    loader = make_loader("device", ds, batch_size, train=True, device=device, seed=seed, channels_last=channels_last)
    loader.set_epoch(0)
    loader.set_yield_index(True)  # the per-image delta of RRM's variant reads each sample's index
    x, y, index = next(iter(loader))
    return x.clone(), y.clone(), index, ds, source


def train_step(method, optimizer):
    """One minibatch exactly as the trainer runs it (rrm_fast.train.Trainer.step), fp32."""
    return Trainer(method, optimizer).step


def build_steps(device="cpu", batch_size: int = 128, student_arch: str = "cnn_wide", teacher_arch: str = "cnn_small",
                pgd_steps=(7,), eps: float = 0.1, alpha: float | None = 0.025, channels_last: bool = True,
                seed: int = 0, breakdown: bool = True) -> StepSetup:
    device = resolve_device(device) if isinstance(device, str) else device
    torch.manual_seed(seed)
    x, y, index, ds, source = demo_batch(batch_size, device, channels_last, seed)
    c, h = ds.images.shape[1], ds.images.shape[2]
    teacher = create_model(teacher_arch, ds.num_classes, c, ds.mean, ds.std, h).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base = create_model(student_arch, ds.num_classes, c, ds.mean, ds.std, h).to(device)
    projected = attach_projection(base, teacher.feature_dim)
    base.to(device)
    copy_head(base, teacher)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    base = base.to(memory_format=fmt)
    teacher = teacher.to(memory_format=fmt)

    def method(name, steps=7, **options):
        student = copy.deepcopy(base).train()  # each method its own weights and optimizer state
        m = METHODS[name](student, teacher if METHODS[name].needs_teacher else None,
                          ThreatModel("Linf", eps, alpha, steps), **options)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return m, train_step(m, opt)

    rrm_method, rrm_step = method("rrm", **PAPER_RRM)
    variant, variant_step = method("rrm")  # --method rrm's defaults
    _, natural_step = method("natural")
    calls = {"natural": lambda: natural_step(x, y),
             "teacher_forward": lambda: rrm_method.teacher_forward(x),
             "rrm": lambda: rrm_step(x, y),
             "rrm_variant": lambda: variant_step(x, y, index)}

    # PGD: an attack on a frozen copy of the student in train mode (as PGD-AT attacks it)
    probe = copy.deepcopy(base).train()
    attack = METHODS["pgd_at"](probe, None, ThreatModel("Linf", eps, alpha, 1)).attack()
    x32 = x.detach().float()
    delta = torch.zeros_like(x32)
    attack.random_init_(delta, x32)
    grad = torch.zeros_like(x32)
    calls["attack_pass"] = lambda: attack.input_grad(x32, delta, y, ce_per_sample)
    for k in pgd_steps:
        _, pgd_step = method("pgd_at", k)
        calls[f"pgd_at_{k}"] = (lambda s: lambda: s(x, y))(pgd_step)
    if breakdown:
        def no_grad_forward():
            with torch.no_grad():
                probe(x32 + delta)
        calls["no_grad_forward"] = no_grad_forward
        calls["linf_step_op"] = lambda: attack.step_(delta, grad, x32, attack.alpha)

    desc = {"student": student_arch + (f" (+ projection {base.backbone_dim}->{teacher.feature_dim}, teacher's head)"
                                       if projected else " (teacher's head)"),
            "teacher": f"{teacher_arch} (frozen, eval mode)", "batch": batch_size, "input": list(x.shape[1:]),
            "data": source, "channels_last": channels_last, "precision": "fp32", "eps": eps,
            "pgd_alpha": attack.alpha if alpha is None else alpha, "pgd_steps": list(pgd_steps),
            "feature_loss": rrm_method.feature_loss,
            "variant": f"student_delta {variant.student_delta}, feature loss {variant.feature_loss}",
            "optimizer": "SGD lr 0.05 momentum 0.9 wd 5e-4"}
    return StepSetup(device, x, y, calls, tuple(pgd_steps), desc)


def ratios(med: dict, pgd_steps) -> dict:
    """The benchmark's ratios from per-item median seconds (see the module docstring)."""
    out = {"rrm_vs_natural_plus_teacher": rrm_overhead(med),
           "rrm_vs_natural": med["rrm"] / med["natural"],
           "rrm_variant_vs_rrm": med["rrm_variant"] / med["rrm"],
           "teacher_forward_vs_natural": med["teacher_forward"] / med["natural"]}
    for k in pgd_steps:
        ideal = k * med["attack_pass"] + med["natural"]
        out[f"pgd_at_{k}_vs_ideal"] = pgd_vs_ideal(med, k)
        out[f"pgd_at_{k}_vs_natural"] = med[f"pgd_at_{k}"] / med["natural"]
        if "no_grad_forward" in med and "linf_step_op" in med:
            # what PGD does beyond the ideal: k step ops and one more forward after the last step
            out[f"pgd_at_{k}_explained"] = (ideal + k * med["linf_step_op"] + med["no_grad_forward"]) / ideal
    out["attack_pass_vs_natural"] = med["attack_pass"] / med["natural"]
    return out


def rrm_overhead(t: dict) -> float:
    """rrm / (natural + teacher_forward) from one round's (or the medians') times."""
    return t["rrm"] / (t["natural"] + t["teacher_forward"])


def pgd_vs_ideal(t: dict, k: int) -> float:
    """pgd_at_k / (k * attack_pass + natural) from one round's (or the medians') times."""
    return t[f"pgd_at_{k}"] / (k * t["attack_pass"] + t["natural"])


def run_steps(device="cpu", reps: int = 20, warmup: int = 3, clock: str = "wall", **kw) -> dict:
    device = resolve_device(device) if isinstance(device, str) else device
    check_clock(clock, device)
    setup = build_steps(device, **kw)
    with LoadSampler(interval=5.0) as load:
        t0 = time.perf_counter()
        times = interleaved_times(setup.calls, setup.device, reps=reps, warmup=warmup, clock=clock)
        seconds = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    rat = ratios(med, setup.pgd_steps)
    rat["rrm_vs_natural_plus_teacher_per_round_median"] = per_round_median(times, rrm_overhead)
    rat["rrm_variant_vs_rrm_per_round_median"] = per_round_median(times, lambda t: t["rrm_variant"] / t["rrm"])
    for k in setup.pgd_steps:
        rat[f"pgd_at_{k}_vs_ideal_per_round_median"] = per_round_median(times, lambda t: pgd_vs_ideal(t, k))
    return {"machine": describe_machine(setup.device), "load": load.stats(), "setup": setup.description,
            "reps": reps, "warmup": warmup, "clock": clock, "seconds": seconds, "median_s": med,
            "quartiles_s": {k: [float(q) for q in statistics.quantiles(v, n=4)] if len(v) > 1 else [v[0]] * 3
                            for k, v in times.items()},
            "times_s": times, "ratios": rat, "rrm_acceptance": RRM_ACCEPTANCE,
            "rrm_accepted": rat["rrm_vs_natural_plus_teacher"] <= RRM_ACCEPTANCE}


def render_markdown(res: dict, command: str) -> str:
    m, s, med, q, rat = res["machine"], res["setup"], res["median_s"], res["quartiles_s"], res["ratios"]
    lines = [f"# Training-step benchmark ({m['device']})", "",
             f"Produced by `{command}` on {m['summary']}; {describe_load(res['load'])} "
             f"during the {res['seconds']:.0f} s of timing.", "",
             f"Student {s['student']}, teacher {s['teacher']}, batch {s['batch']} of {'x'.join(map(str, s['input']))} "
             f"{s['data']} images, channels_last={s['channels_last']}, {s['precision']}, {s['optimizer']}; "
             f"PGD L-inf eps {s['eps']:g}, step {s['pgd_alpha']:g}. RRM feature term: {s['feature_loss']}. "
             f"{res['reps']} round-robin rounds after {res['warmup']} warm-up rounds; median and quartiles per item; "
             + ("wall-clock time (synchronised)." if res["clock"] == "wall" else
                "CPU time of the (single) computing thread: the work itself, without the time other processes held "
                "the core (they still share caches and memory bandwidth)."), "",
             "| item | median ms | quartiles ms | x natural |", "|---|---:|---:|---:|"]
    for k, v in med.items():
        lines.append(f"| {k} | {1e3 * v:.1f} | {1e3 * q[k][0]:.1f} - {1e3 * q[k][2]:.1f} | {v / med['natural']:.2f} |")
    ok = "holds" if res["rrm_accepted"] else "DOES NOT HOLD"
    lines += ["", "| ratio | value | meaning |", "|---|---:|---|",
              f"| rrm / (natural + teacher_forward) | {rat['rrm_vs_natural_plus_teacher']:.3f} | RRM's step overhead beyond "
              f"natural training plus one teacher forward; acceptance <= {res['rrm_acceptance']:.2f}: **{ok}** |",
              f"| same, median of per-round ratios | {rat['rrm_vs_natural_plus_teacher_per_round_median']:.3f} | "
              "check against load drift between items |",
              f"| teacher_forward / natural | {rat['teacher_forward_vs_natural']:.3f} | the teacher's share |",
              f"| rrm_variant / rrm | {rat['rrm_variant_vs_rrm']:.3f} | this project's RRM variant ({s['variant']}) "
              "against the paper's step |",
              f"| same, median of per-round ratios | {rat['rrm_variant_vs_rrm_per_round_median']:.3f} | "
              "check against load drift between items |"]
    for k in s["pgd_steps"]:
        lines.append(f"| pgd_at_{k} / ({k} x attack_pass + natural) | {rat[f'pgd_at_{k}_vs_ideal']:.3f} | PGD-{k} AT "
                     "step against its ideal (only the unavoidable passes) |")
        lines.append(f"| same, median of per-round ratios | {rat[f'pgd_at_{k}_vs_ideal_per_round_median']:.3f} | "
                     "check against load drift between items |")
        if f"pgd_at_{k}_explained" in rat:
            lines.append(f"| (ideal + {k} x linf_step_op + no_grad_forward) / ideal | {rat[f'pgd_at_{k}_explained']:.3f} | "
                         "what the ideal plus PGD's extra work predicts |")
        lines.append(f"| pgd_at_{k} / natural | {rat[f'pgd_at_{k}_vs_natural']:.2f} | naive estimate {k + 1} |")
    lines.append(f"| attack_pass / natural | {rat['attack_pass_vs_natural']:.3f} | a forward + input-backward "
                 "against a training step |")
    lines.append("")
    return "\n".join(lines)


def build_parser():
    p = OneLineArgumentParser(prog="python -m rrm_fast.bench steps", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--reps", type=whole_number, default=20, help="round-robin rounds (>= 20 for reported numbers)")
    p.add_argument("--warmup", type=whole_number, default=3)
    p.add_argument("--batch-size", type=whole_number, default=128)
    p.add_argument("--student", default="cnn_wide")
    p.add_argument("--teacher", default="cnn_small")
    p.add_argument("--pgd-steps", default="7", help="comma-separated k for PGD-k AT steps (default 7)")
    p.add_argument("--alpha", type=float, default=0.025, help="PGD step (default 0.025, METHODS.md)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=whole_number, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="wall: synchronised wall time; thread: CPU time of the calling thread (CPU, --threads 1 only), "
                        "which other processes on a shared machine cannot inflate")
    p.add_argument("--out", default=None, help="Markdown report; a .json with the raw times is written beside it")
    return p


def main(argv=None) -> int:
    from ..errors import run_cli

    def run():
        args = build_parser().parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.out:
            check_output_file(args.out, "--out")
        try:
            pgd = tuple(int(k) for k in args.pgd_steps.split(",") if k.strip())
        except ValueError:
            pgd = ()
        if not pgd or min(pgd) < 1:
            raise ValueError(f"--pgd-steps needs positive integers (got {args.pgd_steps!r})")
        res = run_steps(args.device, reps=args.reps, warmup=args.warmup, clock=args.clock, batch_size=args.batch_size,
                        student_arch=args.student, teacher_arch=args.teacher, pgd_steps=pgd, alpha=args.alpha,
                        channels_last=args.channels_last)
        command = "python -m rrm_fast.bench steps " + " ".join(argv if argv is not None else sys.argv[1:])
        md = render_markdown(res, command.strip())
        print(md)
        if args.out:
            out = Path(args.out)
            atomic_write_text(out, md)
            atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command.strip(), **res}, indent=1))
            print(f"-> {out}, {out.with_suffix('.json')}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
