"""python -m rrm_fast.bench attacks: this project's attacks next to torchattacks', on the same
model and the same images, with the time and the robust accuracy of each.

    python -m rrm_fast.bench attacks --checkpoint runs/demo/student/final.safetensors --n 500

Rows (L-inf, the checkpoint's eps): PGD-20 on CE (ours, torchattacks), APGD-CE-100 and
APGD-T-100 over 9 targets (ours, torchattacks), our default honest pair, our standard suite
(APGD-CE-100 -> APGD-T-100x9 -> Square-5000) and torchattacks' ``AutoAttack(version="standard")``
(its APGD-CE, APGD-T, FAB-T, Square-5000; note that torchattacks 3.5.1 builds them with its own
defaults, 10 iterations, not the paper's 100). A sample is robust under a row when it is clean-
correct and still correct on the row's adversarial input, judged by the same fp32 model (in the
channels-last layout, for both libraries).
Acceptance (issue 13): our standard suite is at least as strong as torchattacks' AutoAttack on
the same images. Times: the thread clock with one torch thread on a CPU (the load of a shared
machine does not enter it), else wall-clock.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..attacks import APGD, APGDT, PGD, default_step
from ..eval import DEFAULT_ATTACKS, Stage, attack_batch, batch_seed, build_stages, first_samples
from ..io import atomic_write_json, atomic_write_text
from .machine import LoadSampler, describe_load, describe_machine, load_verdict
from .timing import check_clock, time_once

FULL = dict(n=500, pgd_steps=20, apgd_steps=100, n_targets=9, n_queries=5000)
QUICK = dict(n=24, pgd_steps=3, apgd_steps=5, n_targets=2, n_queries=20)


def our_rows(model, num_classes, eps, b) -> dict:
    """name -> make(generator) -> stages for the runner (ours)."""
    return {
        f"PGD-{b['pgd_steps']} (CE)": lambda g: [Stage("pgd", PGD(model, eps=eps, steps=b["pgd_steps"], early_stop=True,
                                                                   generator=g), "batch")],
        f"APGD-CE-{b['apgd_steps']}": lambda g: [Stage("apgd", APGD(model, eps=eps, steps=b["apgd_steps"], generator=g),
                                                       "batch")],
        f"APGD-T-{b['apgd_steps']}x{b['n_targets']}": lambda g: [Stage("apgdt", APGDT(
            model, eps=eps, steps=b["apgd_steps"], n_target_classes=b["n_targets"], generator=g), "batch")],
        f"{DEFAULT_ATTACKS} (default pair)": lambda g: build_stages(DEFAULT_ATTACKS, model, num_classes, eps=eps,
                                                                    norm="Linf", generator=g,
                                                                    steps=None if b is FULL else b["pgd_steps"]),
        "standard suite": lambda g: build_stages("standard", model, num_classes, eps=eps, norm="Linf",
                                                 steps=b["apgd_steps"], n_targets=b["n_targets"],
                                                 n_queries=b["n_queries"], generator=g),
    }


def torchattacks_rows(model, num_classes, eps, b, seed) -> dict:
    """name -> make() -> a torchattacks attack (which seeds itself)."""
    import torchattacks as ta
    return {
        f"PGD-{b['pgd_steps']} (CE)": lambda: ta.PGD(model, eps=eps, alpha=default_step(eps, b["pgd_steps"]),
                                                     steps=b["pgd_steps"], random_start=True),
        f"APGD-CE-{b['apgd_steps']}": lambda: ta.APGD(model, eps=eps, steps=b["apgd_steps"], loss="ce", seed=seed),
        f"APGD-T-{b['apgd_steps']}x{num_classes - 1}": lambda: ta.APGDT(model, eps=eps, steps=b["apgd_steps"],
                                                                        n_classes=num_classes, seed=seed),
        "AutoAttack standard": lambda: autoattack(ta, model, num_classes, eps, b, seed),
    }


def autoattack(ta, model, num_classes, eps, b, seed):
    """torchattacks' AutoAttack standard; with --quick the same four attacks with the quick
    budget (its class fixes Square at 5000 queries, too slow for a smoke test)."""
    if b is FULL:
        return ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed)
    k = b["apgd_steps"]
    return ta.MultiAttack([ta.APGD(model, eps=eps, steps=k, loss="ce", seed=seed),
                           ta.APGDT(model, eps=eps, steps=k, n_classes=num_classes, seed=seed),
                           ta.FAB(model, eps=eps, steps=k, multi_targeted=True, n_classes=num_classes, seed=seed),
                           ta.Square(model, eps=eps, n_queries=b["n_queries"], seed=seed)])


def robust_mask_ours(model, make, x, y, eps, batch_size, seed):
    masks = []
    for i in range(0, x.shape[0], batch_size):
        gen = torch.Generator(device=x.device).manual_seed(batch_seed(seed, i))
        rec = attack_batch(model, make(gen), x[i:i + batch_size], y[i:i + batch_size], eps=eps, norm="Linf")
        masks.append(torch.tensor([c == "1" for c in rec["mask"]]))
    return torch.cat(masks)


def robust_mask_torchattacks(model, make, x, y, batch_size, seed):
    masks = []
    for i in range(0, x.shape[0], batch_size):
        torch.manual_seed(batch_seed(seed, i))  # torchattacks' PGD draws its start from the global RNG
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = make()(xb, yb)
        with torch.no_grad():
            masks.append((model(xb).argmax(1) == yb) & (model(x_adv).argmax(1) == yb))
    return torch.cat(masks).cpu()


def measure(model, x, y, eps, num_classes, b, args, device) -> list[dict]:
    rows = []
    entries = [("rrm_fast", k, lambda m=m: robust_mask_ours(model, m, x, y, eps, args.batch_size, args.seed))
               for k, m in our_rows(model, num_classes, eps, b).items()]
    entries += [("torchattacks", k, lambda m=m: robust_mask_torchattacks(model, m, x, y, args.batch_size, args.seed))
                for k, m in torchattacks_rows(model, num_classes, eps, b, args.seed).items()]
    for library, name, run in entries:
        out = {}
        seconds = time_once(lambda: out.setdefault("mask", run()), device, args.clock)
        mask = out["mask"]
        rows.append({"library": library, "attack": name, "robust_acc": float(mask.float().mean()),
                     "seconds": seconds, "mask": "".join("1" if v else "0" for v in mask.tolist())})
        print(f"  {library:<13} {name:<34} {100 * rows[-1]['robust_acc']:6.2f}%  {seconds:8.1f}s", flush=True)
    return rows


def verdict(rows) -> dict:
    """Ours standard vs torchattacks' AutoAttack, per sample."""
    ours = next(r for r in rows if r["library"] == "rrm_fast" and r["attack"] == "standard suite")
    aa = next(r for r in rows if r["library"] == "torchattacks" and r["attack"] == "AutoAttack standard")
    mo = torch.tensor([c == "1" for c in ours["mask"]])
    ma = torch.tensor([c == "1" for c in aa["mask"]])
    return {"ours_standard": ours["robust_acc"], "torchattacks_autoattack": aa["robust_acc"],
            "holds": ours["robust_acc"] <= aa["robust_acc"],
            "fooled_only_by_autoattack": int((mo & ~ma).sum()), "fooled_only_by_ours": int((ma & ~mo).sum())}


def markdown(res: dict) -> str:
    v = res["verdict"]
    lines = [f"# Attacks: rrm_fast vs torchattacks {res['torchattacks_version']}", "",
             *(["**--quick: a smoke test with a few steps, not a result.**", ""] if res["quick"] else []),
             f"Model `{res['checkpoint']}`, the first {res['n']} {res['split']} images, L-inf eps {res['eps']:g}, "
             f"clean accuracy {100 * res['clean_acc']:.2f}%. Device: {res['machine']['summary']}. "
             f"Load: {res['load_text']} ({res['load_verdict']}). Times: {res['clock']} clock.", "",
             "| library | attack | robust acc | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['library']} | {r['attack']} | {100 * r['robust_acc']:.2f}% | {r['seconds']:.1f} |"
              for r in res["rows"]]
    lines += ["", f"Our standard suite {100 * v['ours_standard']:.2f}% vs torchattacks' AutoAttack "
                  f"{100 * v['torchattacks_autoattack']:.2f}%: at least as strong: **{'yes' if v['holds'] else 'NO'}** "
                  f"({v['fooled_only_by_ours']} samples fooled only by ours, {v['fooled_only_by_autoattack']} only by "
                  f"AutoAttack).", "",
              "torchattacks 3.5.1's AutoAttack builds APGD, APGD-T and FAB-T with its own default of 10 iterations "
              "(the paper uses 100); its APGD/APGD-T rows above are run at the same iterations as ours.", "",
              f"Command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.bench attacks", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by rrm_fast.train")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--n", type=int, default=None, help=f"first N images (default {FULL['n']}; --quick {QUICK['n']})")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 lets the thread clock count all the work)")
    p.add_argument("--clock", default=None, choices=["wall", "thread"], help="default: thread on CPU, wall on GPU")
    p.add_argument("--quick", action="store_true", help="a few images and steps: a smoke test, not a result")
    p.add_argument("--out", default=None, help="results .json (a .md table is written beside it); default "
                   "benchmarks/results/attacks_<device>.json")
    return p


def run(args) -> int:
    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..runtime import resolve_device
    b = dict(QUICK if args.quick else FULL, **({"n": args.n} if args.n else {}))
    if b["n"] < 1 or args.batch_size < 1:
        raise ValueError(f"--n and --batch-size must be >= 1 (got {b['n']}, {args.batch_size})")
    out = Path(args.out or f"benchmarks/results/attacks_{'quick_' if args.quick else ''}{args.device}.json")
    if out.suffix != ".json":
        raise ValueError(f"--out must name a .json file (got {out}); the .md table is written beside it")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.clock = args.clock or ("thread" if device.type == "cpu" and args.threads == 1 else "wall")
    check_clock(args.clock, device)
    model, meta = load_model(args.checkpoint, device)
    model = model.eval().to(memory_format=torch.channels_last)  # both libraries attack the same fast layout
    eps = meta.get("config", {}).get("eps", 0.1)
    ds = load_dataset(meta.get("config", {}).get("dataset", "fashion_mnist"), args.split)
    x, y = first_samples(ds, min(b["n"], len(ds)), device, args.batch_size)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"{args.checkpoint}: {x.shape[0]} {args.split} images, Linf eps {eps:g}, clean {100 * clean:.2f}%", flush=True)
    with LoadSampler() as load:
        rows = measure(model, x, y, eps, ds.num_classes, b, args, device)
    import torchattacks
    res = {"checkpoint": str(args.checkpoint), "split": args.split, "n": int(x.shape[0]), "eps": eps,
           "clean_acc": clean, "quick": args.quick, "budget": b, "rows": rows, "verdict": verdict(rows), "clock": args.clock,
           "torchattacks_version": torchattacks.__version__, "machine": describe_machine(device),
           "load": load.stats(), "load_text": describe_load(load.stats()),
           "load_verdict": load_verdict(load.stats(), args.threads),
           "command": "python -m rrm_fast.bench attacks " + " ".join(sys.argv[2:] if args.argv is None else args.argv)}
    atomic_write_json(out, res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    print(f"-> {out}")
    return 0


def main(argv=None) -> int:
    from ..errors import run_cli
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run_cli(lambda: run(args))
