"""Evaluation: clean and PGD-k accuracy (random restarts, per-sample worst case) on a split.

    python -m rrm_fast.eval RUN_DIR/final.safetensors [--steps 20 --restarts 1 --eps 0.1]

The trainer's final figures come from ``evaluate_robustness`` below, with the same defaults
and seed, so this command reproduces them. Checkpoints are never chosen on the test split.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .attacks import PGD, canonical_norm


def _batches(ds, batch_size, device):
    for i in range(0, len(ds), batch_size):
        x = ds.images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
        y = ds.labels[i:i + batch_size].to(device, non_blocking=True)
        yield x, y


def evaluate_robustness(model, ds, *, eps, norm="Linf", steps=20, restarts=1, alpha=None, batch_size=500,
                        device="cpu", seed=0, progress=False, channels_last=False) -> dict:
    """Clean accuracy and PGD-``steps`` accuracy (a sample is robust only if every restart
    fails on it), in fp32, with the model in eval mode."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    attack = PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts, early_stop=True,
                 generator=gen)
    n = clean = robust = 0
    t0 = time.perf_counter()
    it = _batches(ds, batch_size, device)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, total=(len(ds) + batch_size - 1) // batch_size, desc=f"eval PGD-{steps}", leave=False,
                  dynamic_ncols=True)
    for x, y in it:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        x_adv = attack(x, y) if eps > 0 else x
        with torch.no_grad():
            still = (model(x_adv).argmax(1) == y) & correct
        n += y.numel()
        clean += int(correct.sum())
        robust += int(still.sum())
    return {"n": n, "clean_acc": clean / max(n, 1), "robust_acc": robust / max(n, 1), "attack": f"PGD-{steps}",
            "restarts": restarts, "eps": eps, "norm": canonical_norm(norm),
            "alpha": attack.alpha, "seconds": time.perf_counter() - t0}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.eval", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by rrm_fast.train (with its .json sidecar)")
    p.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--eps", type=float, default=None, help="default: the checkpoint's training eps")
    p.add_argument("--norm", default=None, help="Linf or L2; default: the checkpoint's")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--alpha", type=float, default=None, help="PGD step; default 2.5*eps/steps")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results file (default: next to the checkpoint)")
    return p


def main(argv=None) -> int:
    from .checkpoint import atomic_write_json, load_model
    from .data import load_dataset
    from .runtime import resolve_device
    from .errors import run_cli

    def run():
        args = build_parser().parse_args(argv)
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1 (got {args.steps})")
        device = resolve_device(args.device)
        model, meta = load_model(args.checkpoint, device)
        train_cfg = meta.get("config", {})
        dataset = args.dataset or train_cfg.get("dataset", "fashion_mnist")
        data_dir = args.data_dir or train_cfg.get("data_dir")
        eps = args.eps if args.eps is not None else train_cfg.get("eps", 0.1)
        norm = args.norm or train_cfg.get("norm", "Linf")
        ds = load_dataset(dataset, args.split, data_dir)
        if args.test_size:
            ds = ds.subset(torch.arange(min(args.test_size, len(ds))))
        spec = meta["model"]
        if tuple(ds.images.shape[1:2]) != (spec["in_channels"],) or ds.num_classes != spec["num_classes"]:
            raise ValueError(
                f"checkpoint expects {spec['in_channels']}-channel inputs and {spec['num_classes']} classes but {dataset} has "
                f"{ds.images.shape[1]} and {ds.num_classes}; pass the --dataset it was trained on"
            )
        res = evaluate_robustness(model, ds, eps=eps, norm=norm, steps=args.steps, restarts=args.restarts,
                                  alpha=args.alpha, batch_size=args.batch_size, device=device, seed=args.seed,
                                  progress=sys.stderr.isatty())
        res.update({"checkpoint": str(args.checkpoint), "dataset": dataset, "split": args.split})
        out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
        atomic_write_json(out, res)
        print(f"{dataset}/{args.split} n={res['n']}  clean {100 * res['clean_acc']:.2f}%  "
              f"{res['attack']} x{res['restarts']} ({res['norm']} eps={eps:g}) {100 * res['robust_acc']:.2f}%  -> {out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
