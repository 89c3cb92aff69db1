"""Which cheap CE + margin attack pair gets closest to the standard suite? (issue 13)

Every candidate attack runs on its own on every clean-correct sample of the same images, so
any pair's per-sample worst case is the AND of two robust masks; the standard suite
(APGD-CE-100 -> APGD-T-100x9 -> Square-5000, each on the survivors of the earlier ones) is
the reference. Times are CPU seconds of the one torch thread (``time.thread_time``), so the
load of a shared machine does not enter them.

    python benchmarks/attack_pair_choice.py --model student=runs/demo/student/final.safetensors \\
        --model teacher=runs/demo/teacher/final.safetensors --model pgd_at=runs/pgd_at/final.safetensors \\
        --slice heldout --n 1000 --out benchmarks/results/attack_pair_choice_heldout.json

``--slice heldout``: the first N of the held-out slice of the TRAIN split that the checkpoint's
own training run monitored on (rebuilt from its recorded config); ``--slice test``: the first
N test images. Choices are made on the held-out slice and confirmed on the test split.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from rrm_fast.attacks import APGD, APGDT, PGD, Square, ce_per_sample, cw_loss, dlr_loss
from rrm_fast.eval import AutocastModel, Stage, attack_batch, batch_seed
from rrm_fast.eval.batches import dataset_batches
from rrm_fast.io import atomic_write_json, atomic_write_text

STANDARD = ("APGD-CE-100", "APGD-T-100x9", "Square-5000")


DEFAULT_CANDIDATES = ("PGD-10-CE,PGD-10-DLR,PGD-20-CE,PGD-20-DLR,PGD-50-CE,PGD-50-DLR,PGD-10-CW,PGD-20-CW,"
                      "APGD-CE-50,APGD-DLR-50,APGD-T-50x3")


def make_attack(name, model, eps, gen):
    """A candidate by name: PGD-<k>-<CE|CW|DLR>, APGD-<CE|DLR>-<k>, APGD-T-<k>x<targets>."""
    parts = name.split("-")
    if parts[0] == "PGD":
        loss = {"CE": ce_per_sample, "CW": cw_loss, "DLR": dlr_loss}[parts[2]]
        return PGD(model, eps=eps, steps=int(parts[1]), loss_fn=loss, early_stop=True, generator=gen)
    if parts[1] == "T":
        k, targets = parts[2].split("x")
        return APGDT(model, eps=eps, steps=int(k), n_target_classes=int(targets), generator=gen)
    return APGD(model, eps=eps, steps=int(parts[2]), loss=parts[1].lower(), generator=gen)


def standard_stages(model, eps, gen):
    return [APGD(model, eps=eps, steps=100, loss="ce", generator=gen),
            APGDT(model, eps=eps, steps=100, n_target_classes=9, generator=gen),
            Square(model, eps=eps, n_queries=5000, generator=gen)]


def timed(fn):
    t0 = time.thread_time()
    out = fn()
    return out, time.thread_time() - t0


def measure(model, ds, eps, batch_size, seed, log, attack_amp=False, candidates=(), standard=True, channels_last=True):
    """Per-sample robust masks (as '0'/'1' strings) and CPU seconds of every attack; with
    ``attack_amp`` the attacks query the model under bf16 autocast (judged in fp32 all the same)."""
    attack_model = AutocastModel(model, "cpu") if attack_amp else model
    masks, seconds = {}, {}

    def add(name, mask, sec):
        masks[name] = masks.get(name, "") + "".join("1" if v else "0" for v in mask.tolist())
        seconds[name] = seconds.get(name, 0.0) + sec

    for start, x, y in dataset_batches(ds, batch_size, "cpu"):
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        add("clean", correct, 0.0)
        gen = torch.Generator().manual_seed(batch_seed(seed, start))
        for name in candidates:
            gen.manual_seed(batch_seed(seed, start))
            attack = make_attack(name, attack_model, eps, gen)
            rec, sec = timed(lambda: attack_batch(model, [Stage(name, attack, "correct")], x, y, eps=eps, norm="Linf"))
            add(name, torch.tensor([c == "1" for c in rec["mask"]]), sec)
            log(f"  batch {start}: {name} {rec['robust']}/{rec['n']} in {sec:.1f}s")
        if not standard:
            continue
        gen.manual_seed(batch_seed(seed, start))
        robust = correct.clone()
        for name, attack in zip(STANDARD, standard_stages(attack_model, eps, gen)):
            idx = robust.nonzero().squeeze(1)
            rec, sec = timed(lambda: attack_batch(model, [Stage(name, attack, "batch")], x[idx], y[idx], eps=eps,
                                                  norm="Linf") if idx.numel() else None)
            if rec is not None:
                robust[idx] = torch.tensor([c == "1" for c in rec["mask"]])
            add(name, robust, sec)  # the cascade's mask after this stage
            log(f"  batch {start}: {name} on {idx.numel()} -> {int(robust.sum())} in {sec:.1f}s")
    return masks, seconds


DEFAULT_PAIRS = ("PGD-10-CE+PGD-10-DLR,PGD-20-CE+PGD-20-DLR,PGD-50-CE+PGD-50-DLR,PGD-10-CE+PGD-10-CW,"
                 "PGD-20-CE+PGD-20-CW,APGD-CE-50+APGD-DLR-50,APGD-CE-50+APGD-T-50x3,PGD-20-CE+APGD-T-50x3")


def summarise(masks, seconds, pairs):
    """Robust accuracy of every attack alone, every pair's worst case (the AND of the two
    attacks' robust masks; time: both attacks on every clean-correct sample), the standard
    suite, and its first two stages as a pair (APGD-T only on APGD-CE's survivors)."""
    as_bool = {k: torch.tensor([c == "1" for c in v]) for k, v in masks.items()}
    acc = lambda m: round(100 * float(m.float().mean()), 2)
    standard = as_bool[STANDARD[-1]]
    rows = {"n": len(masks["clean"]), "clean": acc(as_bool["clean"]), "standard": acc(standard),
            "standard_seconds": {k: round(seconds[k], 1) for k in STANDARD}, "alone": {}, "pairs": {}}
    for k in seconds:
        if k not in STANDARD[1:] and k != "clean":
            rows["alone"][k] = {"robust": acc(as_bool[k]), "seconds": round(seconds[k], 1)}

    def pair_row(worst, sec, ce=None, margin=None):
        row = {"robust": acc(worst), "gap_to_standard": round(acc(worst) - acc(standard), 2), "seconds": round(sec, 1),
               "missed_by_pair_found_by_standard": int((worst & ~standard).sum())}
        if ce is not None:
            row["ce_minus_margin"] = round(acc(as_bool[ce]) - acc(as_bool[margin]), 2)
        return row

    for pair in pairs:
        ce, margin = pair.split("+")
        if ce in as_bool and margin in as_bool:
            rows["pairs"][pair] = pair_row(as_bool[ce] & as_bool[margin], seconds[ce] + seconds[margin], ce, margin)
    rows["pairs"]["APGD-CE-100->APGD-T-100x9"] = pair_row(as_bool[STANDARD[1]], seconds[STANDARD[0]] + seconds[STANDARD[1]])
    return rows


def merged(files):
    """label -> (masks, seconds) from earlier result files of the same images (the later file
    wins for an attack measured twice)."""
    out = {}
    for f in files:
        for label, m in json.loads(open(f).read())["models"].items():
            masks, seconds = out.setdefault(label, ({}, {}))
            masks.update(m["masks"])
            seconds.update(m.get("seconds_raw") or {"clean": 0.0, **m["standard_seconds"],
                                                    **{k: v["seconds"] for k, v in m["alone"].items()}})
    return out


def markdown(results) -> str:
    """Per model: the standard suite, each attack alone, and every pair's worst case and time."""
    lines = [f"# Cheap CE + margin pairs vs the standard suite ({results['slice']} slice, "
             f"{results['attack_precision']} attacks)", "",
             "Robust accuracy (%) on the same images; gap = pair - standard (points; 0 = as strong); time = CPU "
             "seconds of one thread for both attacks on every clean-correct sample.", "",
             f"Command: `{results['command']}`", ""]
    for i, cmds in enumerate(results.get("merged_from", [])):
        lines += [f"Merged from (file {i + 1}): " + "; ".join(f"`{c}`" for c in cmds), ""]
    for label, m in results["models"].items():
        std = m["standard_seconds"]
        lines += [f"## {label} (n = {m['n']}, clean {m['clean']}%)", "",
                  f"Standard suite {m['standard']}% in {sum(std.values()):.0f} s ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in std.items()) + ").", "",
                  "| pair | robust | gap | CE - margin alone | missed | seconds |", "|---|---|---|---|---|---|"]
        for k, r in sorted(m["pairs"].items(), key=lambda kv: (kv[1]["gap_to_standard"], kv[1]["seconds"])):
            lines.append(f"| {k} | {r['robust']} | {r['gap_to_standard']:+.1f} | {r.get('ce_minus_margin', '')} | "
                         f"{r['missed_by_pair_found_by_standard']} | {r['seconds']} |")
        lines += ["", "| alone | robust | seconds |", "|---|---|---|"]
        lines += [f"| {k} | {r['robust']} | {r['seconds']} |" for k, r in sorted(m["alone"].items())]
        lines.append("")
    return "\n".join(lines)


def load_slice(ckpt, which, n, channels_last=True):
    from rrm_fast.checkpoint import load_model
    from rrm_fast.data import load_dataset
    from rrm_fast.data.arrays import split_holdout
    model, meta = load_model(ckpt, "cpu")
    cfg = meta.get("config", {})
    if which == "test":
        ds = load_dataset(cfg.get("dataset", "fashion_mnist"), "test")
    else:  # the run's own held-out monitoring slice of the TRAIN split
        full = load_dataset(cfg.get("dataset", "fashion_mnist"), "train")
        if cfg.get("train_size"):
            full = full.subset(torch.arange(min(cfg["train_size"] + cfg["monitor_size"], len(full))))
        _, ds = split_holdout(full, cfg["monitor_size"], seed=cfg.get("seed", 0))
    # channels-last: 1.7x (cnn_wide) to 3.4x (cnn_small) faster forwards on this CPU, same attacks
    model = model.eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, ds.subset(torch.arange(min(n, len(ds)))), cfg.get("eps", 0.1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="LABEL=checkpoint.safetensors (repeatable)")
    p.add_argument("--slice", choices=["heldout", "test"], default="heldout")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", default=DEFAULT_CANDIDATES, help="comma-separated candidates, each run alone")
    p.add_argument("--no-standard", action="store_true", help="skip the standard suite (merge it from --merge files)")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma-separated CE+MARGIN pairs to summarise")
    p.add_argument("--merge", nargs="*", default=[], help="earlier result files of the same images to combine")
    p.add_argument("--attack-amp", action="store_true", help="attacks under bf16 autocast (judged in fp32)")
    p.add_argument("--no-channels-last", action="store_true", help="model and inputs in the default NCHW layout")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # thread CPU time measures all of the work only on one thread
    pairs = [q for q in args.pairs.split(",") if q]
    results = {"slice": args.slice, "attack_precision": "bf16 autocast" if args.attack_amp else "fp32",
               "layout": "NCHW" if args.no_channels_last else "channels-last",
               "command": " ".join(sys.argv), "machine": {"loadavg_start": os.getloadavg()}, "models": {}}
    earlier = merged(args.merge)
    results["merged_from"] = [json.loads(open(f).read()).get("merged_from", []) + [json.loads(open(f).read()).get(
        "command", f)] for f in args.merge]
    for spec in args.model:
        label, ckpt = spec.split("=", 1)
        model, ds, eps = load_slice(ckpt, args.slice, args.n, not args.no_channels_last)
        print(f"{label}: {ckpt}, {len(ds)} {args.slice} images, Linf eps {eps}", flush=True)
        masks, seconds = measure(model, ds, eps, args.batch_size, args.seed, lambda m: print(m, flush=True),
                                 attack_amp=args.attack_amp, candidates=[a for a in args.attacks.split(",") if a],
                                 standard=not args.no_standard, channels_last=not args.no_channels_last)
        old_masks, old_seconds = earlier.pop(label, ({}, {}))
        earlier[label] = ({**old_masks, **masks}, {**old_seconds, **seconds})
        results["models"][label] = {"checkpoint": ckpt, "eps": eps}
    for label, (masks, seconds) in earlier.items():
        results["models"].setdefault(label, {}).update({**summarise(masks, seconds, pairs), "masks": masks,
                                                        "seconds_raw": seconds})
    results["machine"]["loadavg_end"] = os.getloadavg()
    atomic_write_json(args.out, results)
    atomic_write_text(args.out.rsplit(".", 1)[0] + ".md", markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
