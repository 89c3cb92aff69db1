"""Evaluation suites: robust accuracy you can trust, and certified accuracy of smoothed models.

    python -m rrm_fast.eval RUN_DIR/final.safetensors                    # --suite quick: PGD-20
    python -m rrm_fast.eval RUN_DIR/final.safetensors --suite standard   # APGD-CE -> APGD-T -> Square
    python -m rrm_fast.eval RUN_DIR/final.safetensors --suite certify --sigma 0.25 --n 1000 --test-size 100

* quick: clean and PGD-k accuracy (random start, restarts; a sample is robust only if every
  restart fails). The trainer's final figure comes from ``evaluate_robustness`` below with the
  same defaults and seed, so this command reproduces it.
* standard: like AutoAttack's standard version (without FAB-T): APGD-CE, then targeted
  APGD-DLR over the top-9 other classes, then the Square attack (5000 queries), each run only on
  the samples every earlier attack failed on; robust = every attack failed (worst case).
* certify: Cohen et al.'s CERTIFY for the Gaussian-smoothed model (see rrm_fast.smoothing).

quick and standard also run the gradient-masking diagnostics (rrm_fast.diagnostics) on the
first --diag-size samples and print/record every violated check as a warning. Attacks run in
fp32 unless --attack-amp. Long runs write per-batch progress next to the output
(``*.partial.json``, atomically) and ``--resume`` skips the batches already done. The test
split is never used to choose a checkpoint or a hyper-parameter.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .attacks import APGD, APGDT, PGD, Square, canonical_norm
from .diagnostics import batch_seed, format_diagnostics, gradient_masking_checks

SUITES = ("quick", "standard", "certify")
PERTURBATION_SLACK = 1e-5  # float32 rounding of (x + delta) - x; anything beyond is a bug


# ---------------------------------------------------------------------------------------
# shared pieces
def _batches(ds, batch_size, device):
    """(start index, x float [0,1] on device, y) in dataset order. In-memory datasets are sliced;
    folder datasets (decoded from disk) go through the project's eval loader, in order."""
    if hasattr(ds, "images"):
        for i in range(0, len(ds), batch_size):
            x = ds.images[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
            y = ds.labels[i:i + batch_size].to(device, non_blocking=True)
            yield i, x, y
        return
    from .data import make_loader
    start = 0
    for x, y in make_loader("auto", ds, batch_size, train=False, device=device):
        yield start, x.float(), y
        start += int(y.numel())


def first_samples(ds, k, device, batch_size=500):
    """The first ``k`` samples as (x, y) tensors on ``device``."""
    xs, ys, have = [], [], 0
    for _, x, y in _batches(ds, min(batch_size, k), device):
        xs.append(x[:k - have])
        ys.append(y[:k - have])
        have += xs[-1].shape[0]
        if have >= k:
            break
    return torch.cat(xs), torch.cat(ys)


class AutocastModel(nn.Module):
    """Runs ``model`` under autocast (bf16 on CPU and on CUDA where supported, else fp16) and
    returns fp32 logits, so the attacks' losses and steps stay in fp32."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.device_type = torch.device(device).type
        if self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            self.dtype = torch.float16
        else:
            self.dtype = torch.bfloat16

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def attack_view(model, device, attack_amp: bool):
    return AutocastModel(model, device) if attack_amp else model


class ProgressFile:
    """Per-batch results, rewritten atomically after every batch, so an interrupted run can
    resume: a record is reused only when the settings that produced it are identical."""

    def __init__(self, path, settings: dict, resume: bool):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.records: dict[str, dict] = {}
        if self.path.exists():
            if not resume:
                print(f"note: {self.path} holds an interrupted run; starting over (pass --resume to continue it)")
            else:
                try:
                    saved = json.loads(self.path.read_text())
                except json.JSONDecodeError:
                    raise ValueError(f"{self.path} is not valid JSON; delete it and rerun") from None
                if saved.get("settings") != self.settings:
                    diff = sorted(k for k in set(self.settings) | set(saved.get("settings", {}))
                                  if self.settings.get(k) != saved.get("settings", {}).get(k))
                    raise ValueError(f"{self.path} was written with different settings ({', '.join(diff)}); rerun with "
                                     f"the same flags, or without --resume to start over")
                self.records = saved.get("records", {})
                if self.records:
                    print(f"resuming: {len(self.records)} batch(es) already done in {self.path}")

    def get(self, key):
        return self.records.get(str(key))

    def put(self, key, record: dict) -> None:
        from .io import atomic_write_json
        self.records[str(key)] = record
        atomic_write_json(self.path, {"settings": self.settings, "records": self.records})

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()


def _mask_str(mask: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask_from(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


def _progress_iter(it, total, desc, show):
    if not show:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)


def check_threat_model(x, x_adv, eps, norm, lo=0.0, hi=1.0, name="attack"):
    """Raise if an attack returned inputs outside the eps-ball or the box (a bug, never a result)."""
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    worst = float(size.max()) if size.numel() else 0.0
    if worst > eps * (1 + PERTURBATION_SLACK) + PERTURBATION_SLACK or (x_adv.numel() and (
            float(x_adv.min()) < lo - PERTURBATION_SLACK or float(x_adv.max()) > hi + PERTURBATION_SLACK)):
        raise RuntimeError(f"{name} left the threat model ({norm} size {worst:.6g} vs eps {eps:g}, range "
                           f"[{float(x_adv.min()):.4g}, {float(x_adv.max()):.4g}]); this is a bug in the attack")
    return worst


# ---------------------------------------------------------------------------------------
# quick: PGD-k
def evaluate_robustness(model, ds, *, eps, norm="Linf", steps=20, restarts=1, alpha=None, batch_size=500,
                        device="cpu", seed=0, progress=False, channels_last=False, attack_amp=False,
                        progress_file: ProgressFile | None = None, per_sample=False) -> dict:
    """Clean accuracy and PGD-``steps`` accuracy (a sample is robust only if every restart
    fails on it), with the model in eval mode; attacks in fp32 unless ``attack_amp``.
    Each batch's random starts are seeded from (seed, batch start), so results do not depend
    on which batches ran before (resume). ``per_sample`` adds a "robust_mask" bool tensor."""
    norm = canonical_norm(norm)
    model.eval()
    amodel = attack_view(model, device, attack_amp)
    attack_alpha = PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts).alpha  # validates too
    n = clean = robust = 0
    masks = []
    t0 = time.perf_counter()
    total = (len(ds) + batch_size - 1) // batch_size
    for start, x, y in _progress_iter(_batches(ds, batch_size, device), total, f"eval PGD-{steps}", progress):
        rec = progress_file.get(start) if progress_file is not None else None
        if rec is None:
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            gen = torch.Generator(device=device).manual_seed(batch_seed(seed, start))
            attack = PGD(amodel, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts, early_stop=True,
                         generator=gen)
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            x_adv = attack(x, y) if eps > 0 else x
            check_threat_model(x, x_adv, eps, norm, name=f"PGD-{steps}")
            with torch.no_grad():
                still = (model(x_adv).argmax(1) == y) & correct
            rec = {"n": int(y.numel()), "clean": int(correct.sum()), "robust": int(still.sum()), "mask": _mask_str(still)}
            if progress_file is not None:
                progress_file.put(start, rec)
        n += rec["n"]
        clean += rec["clean"]
        robust += rec["robust"]
        if per_sample:
            masks.append(_mask_from(rec["mask"]))
    res = {"n": n, "clean_acc": clean / max(n, 1), "robust_acc": robust / max(n, 1), "attack": f"PGD-{steps}",
           "restarts": restarts, "eps": eps, "norm": norm, "alpha": attack_alpha,
           "seconds": time.perf_counter() - t0}
    if per_sample:
        res["robust_mask"] = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
    return res


# ---------------------------------------------------------------------------------------
# standard: APGD-CE -> APGD-T -> Square
def standard_attacks(model, num_classes, *, eps, norm, steps, restarts, n_targets, n_queries, generator):
    """The standard suite's attacks in order, as (name, attack)."""
    attacks = [(f"APGD-CE-{steps}", APGD(model, eps=eps, norm=norm, steps=steps, restarts=restarts, loss="ce",
                                         generator=generator))]
    if num_classes >= 4:
        k = min(n_targets, num_classes - 1)
        attacks.append((f"APGD-T-{steps}x{k}", APGDT(model, eps=eps, norm=norm, steps=steps, restarts=restarts,
                                                       n_target_classes=k, generator=generator)))
    elif num_classes == 3:  # targeted DLR needs 4 classes; the untargeted DLR loss still works
        attacks.append((f"APGD-DLR-{steps}", APGD(model, eps=eps, norm=norm, steps=steps, restarts=restarts,
                                                  loss="dlr", generator=generator)))
    attacks.append((f"Square-{n_queries}", Square(model, eps=eps, norm=norm, n_queries=n_queries, generator=generator)))
    return attacks


def evaluate_standard(model, ds, *, eps, norm="Linf", steps=100, restarts=1, n_targets=9, n_queries=5000,
                      batch_size=500, device="cpu", seed=0, progress=False, channels_last=False, attack_amp=False,
                      progress_file: ProgressFile | None = None) -> dict:
    """Per-sample worst case over APGD-CE, APGD-T and Square, each run on the samples still robust."""
    norm = canonical_norm(norm)
    if n_targets < 1:
        raise ValueError(f"--n-targets must be >= 1 (got {n_targets})")
    model.eval()
    amodel = attack_view(model, device, attack_amp)
    names = [name for name, _ in standard_attacks(model, ds.num_classes, eps=eps, norm=norm, steps=steps,
                                                  restarts=restarts, n_targets=n_targets, n_queries=n_queries,
                                                  generator=None)]
    n = clean = 0
    run_on = {k: 0 for k in names}
    fooled = {k: 0 for k in names}
    max_size = {k: 0.0 for k in names}
    attack_seconds = {k: 0.0 for k in names}
    masks = []
    t0 = time.perf_counter()
    total = (len(ds) + batch_size - 1) // batch_size
    for start, x, y in _progress_iter(_batches(ds, batch_size, device), total, "eval standard", progress):
        rec = progress_file.get(start) if progress_file is not None else None
        if rec is None:
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            gen = torch.Generator(device=device).manual_seed(batch_seed(seed, start))
            with torch.no_grad():
                robust = model(x).argmax(1) == y
            rec = {"n": int(y.numel()), "clean": int(robust.sum()), "run_on": {}, "fooled": {}, "max_size": {},
                   "seconds": {}}
            for name, attack in standard_attacks(amodel, ds.num_classes, eps=eps, norm=norm, steps=steps,
                                                 restarts=restarts, n_targets=n_targets, n_queries=n_queries,
                                                 generator=gen):
                idx = robust.nonzero().squeeze(1)
                rec["run_on"][name] = int(idx.numel())
                rec["fooled"][name] = 0
                rec["max_size"][name] = 0.0
                rec["seconds"][name] = 0.0
                if idx.numel() == 0 or eps == 0:
                    continue
                ta = time.perf_counter()
                x_adv = attack(x[idx], y[idx])
                rec["seconds"][name] = time.perf_counter() - ta
                rec["max_size"][name] = check_threat_model(x[idx], x_adv, eps, norm, name=name)
                with torch.no_grad():
                    now_wrong = model(x_adv).argmax(1) != y[idx]
                robust[idx[now_wrong]] = False
                rec["fooled"][name] = int(now_wrong.sum())
            rec["robust"] = int(robust.sum())
            rec["mask"] = _mask_str(robust)
            if progress_file is not None:
                progress_file.put(start, rec)
        n += rec["n"]
        clean += rec["clean"]
        for k in names:
            run_on[k] += rec["run_on"][k]
            fooled[k] += rec["fooled"][k]
            max_size[k] = max(max_size[k], rec["max_size"][k])
            attack_seconds[k] += rec["seconds"][k]
        masks.append(_mask_from(rec["mask"]))
    robust_n = clean
    table = []
    for k in names:
        robust_n -= fooled[k]
        table.append({"attack": k, "run_on": run_on[k], "fooled": fooled[k], "robust_acc_after": robust_n / max(n, 1),
                      "max_perturbation": max_size[k], "seconds": attack_seconds[k]})
    return {"n": n, "clean_acc": clean / max(n, 1), "robust_acc": robust_n / max(n, 1), "attacks": table,
            "attack": " -> ".join(names), "restarts": restarts, "eps": eps, "norm": norm, "steps": steps,
            "n_targets": n_targets, "n_queries": n_queries, "seconds": time.perf_counter() - t0,
            "robust_mask": torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)}


# ---------------------------------------------------------------------------------------
# certify: randomized smoothing
def evaluate_certified(model, ds, *, sigma, n0=100, n=100_000, alpha=0.001, batch_size=1000, radii=None,
                       device="cpu", seed=0, progress=False, progress_file: ProgressFile | None = None,
                       chunk=20) -> dict:
    """CERTIFY on every sample; certified accuracy per radius and ACR."""
    from .smoothing import DEFAULT_RADII, Smooth, max_certifiable_radius, summarize_certification
    radii = tuple(DEFAULT_RADII if radii is None else radii)
    model.eval()
    smooth = Smooth(model, ds.num_classes, sigma)
    labels, preds, rads = [], [], []
    t0 = time.perf_counter()
    total = (len(ds) + chunk - 1) // chunk
    for start, xs, ys in _progress_iter(_batches(ds, chunk, device), total, "certify", progress):
        rec = progress_file.get(start) if progress_file is not None else None
        if rec is None:
            rec = {"label": [], "pred": [], "radius": []}
            for j in range(xs.shape[0]):
                gen = torch.Generator(device=device).manual_seed(batch_seed(seed, start + j))
                pred, radius = smooth.certify(xs[j], n0, n, alpha, batch_size, generator=gen)
                rec["label"].append(int(ys[j]))
                rec["pred"].append(pred)
                rec["radius"].append(radius)
            if progress_file is not None:
                progress_file.put(start, rec)
        labels += rec["label"]
        preds += rec["pred"]
        rads += rec["radius"]
    summary = summarize_certification(labels, preds, rads, radii)
    summary.update({"sigma": sigma, "n0": n0, "n_samples": n, "alpha": alpha,
                    "max_certifiable_radius": max_certifiable_radius(sigma, n, alpha),
                    "seconds": time.perf_counter() - t0})
    return summary


# ---------------------------------------------------------------------------------------
# printing
def format_robust_table(res: dict, where: str) -> str:
    lines = [f"{where}  n={res['n']}  {res['norm']} eps={res['eps']:g}  ({res['suite']} suite, "
             f"{res['attack_precision']} attacks)",
             f"  {'attack':<22}{'run on':>8}{'fooled':>8}{'robust acc':>12}",
             f"  {'clean':<22}{'':>8}{'':>8}{100 * res['clean_acc']:>11.2f}%"]
    if res["suite"] == "standard":
        for row in res["attacks"]:
            lines.append(f"  {row['attack']:<22}{row['run_on']:>8}{row['fooled']:>8}{100 * row['robust_acc_after']:>11.2f}%")
    else:
        name = f"{res['attack']} x{res['restarts']}"
        lines.append(f"  {name:<22}{round(res['clean_acc'] * res['n']):>8}"
                     f"{round((res['clean_acc'] - res['robust_acc']) * res['n']):>8}{100 * res['robust_acc']:>11.2f}%")
    lines.append(f"  {'worst case':<22}{'':>8}{'':>8}{100 * res['robust_acc']:>11.2f}%")
    return "\n".join(lines)


def format_certify_table(res: dict, where: str) -> str:
    lines = [f"{where}  n={res['n']}  sigma={res['sigma']:g}  n0={res['n0']} n={res['n_samples']} "
             f"alpha={res['alpha']:g}  (certify suite)",
             f"  {'radius':<10}{'certified acc':>14}"]
    for r, acc in res["certified_acc"].items():
        flag = "   (above the largest certifiable radius with this n)" if float(r) > res["max_certifiable_radius"] else ""
        lines.append(f"  {r:<10}{100 * acc:>13.2f}%{flag}")
    lines.append(f"  ACR {res['acr']:.4f}   abstained {100 * res['abstain_rate']:.1f}%   largest certifiable radius "
                 f"{res['max_certifiable_radius']:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python -m rrm_fast.eval", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by rrm_fast.train (with its .json sidecar)")
    p.add_argument("--suite", default="quick", choices=SUITES,
                   help="quick: PGD-k; standard: APGD-CE -> APGD-T -> Square (worst case); certify: randomized smoothing")
    p.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--eps", type=float, default=None, help="default: the checkpoint's training eps")
    p.add_argument("--norm", default=None, help="Linf or L2; default: the checkpoint's")
    p.add_argument("--steps", type=int, default=None, help="PGD steps (quick, default 20) or APGD iterations (standard, default 100)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--alpha", type=float, default=None, help="quick suite's PGD step; default 2.5*eps/steps")
    p.add_argument("--n-targets", type=int, default=9, help="standard: APGD-T target classes (top-k other classes)")
    p.add_argument("--n-queries", type=int, default=5000, help="standard: Square attack queries per sample")
    p.add_argument("--batch-size", type=int, default=500, help="attack batch; certify: noise samples per forward")
    p.add_argument("--test-size", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack-amp", action="store_true", help="run the attacks' forward/backward under autocast "
                   "(bf16/fp16); accuracy is still judged in fp32")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its .partial.json")
    p.add_argument("--diag-size", type=int, default=500, help="samples for the gradient-masking checks (0 skips them)")
    p.add_argument("--diag-steps", type=int, default=None,
                   help="PGD steps k of the checks (k vs 2k, eps..4eps); default: --steps for quick, 20 for standard")
    p.add_argument("--diag-queries", type=int, default=1000, help="quick suite: Square queries of the black-box check")
    p.add_argument("--sigma", type=float, default=None, help="certify: Gaussian noise level (default: the checkpoint's)")
    p.add_argument("--n0", type=int, default=100, help="certify: selection samples")
    p.add_argument("--n", type=int, default=100_000, help="certify: estimation samples (CPU: e.g. --n 1000 --test-size 100)")
    p.add_argument("--cert-alpha", type=float, default=0.001, help="certify: failure probability")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="certify: radii to report certified accuracy at")
    p.add_argument("--out", default=None, help="JSON results file (default: next to the checkpoint)")
    return p


def _validate(args):
    checks = [(args.steps is None or args.steps >= 1, f"--steps must be >= 1 (got {args.steps})"),
              (args.restarts >= 1, f"--restarts must be >= 1 (got {args.restarts})"),
              (args.batch_size >= 1, f"--batch-size must be >= 1 (got {args.batch_size})"),
              (args.test_size is None or args.test_size >= 1, f"--test-size must be >= 1 (got {args.test_size})"),
              (args.n_queries >= 1, f"--n-queries must be >= 1 (got {args.n_queries})"),
              (args.n_targets >= 1, f"--n-targets must be >= 1 (got {args.n_targets})"),
              (args.diag_size >= 0, f"--diag-size must be >= 0 (got {args.diag_size})"),
              (args.diag_steps is None or args.diag_steps >= 1, f"--diag-steps must be >= 1 (got {args.diag_steps})"),
              (args.diag_queries >= 1, f"--diag-queries must be >= 1 (got {args.diag_queries})"),
              (args.eps is None or args.eps >= 0, f"--eps must be >= 0 (got {args.eps}); it is in pixel units, e.g. 0.1"),
              (args.n0 >= 1 and args.n >= 1, f"--n0 and --n must be >= 1 (got {args.n0}, {args.n})"),
              (0 < args.cert_alpha < 1, f"--cert-alpha must be in (0, 1) (got {args.cert_alpha}), e.g. 0.001"),
              (args.sigma is None or args.sigma > 0, f"--sigma must be > 0 (got {args.sigma}), e.g. 0.25")]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    try:
        radii = tuple(float(r) for r in args.radii.split(",") if r.strip())
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers like 0,0.25,0.5 (got {args.radii!r})") from None
    if not radii or min(radii) < 0:
        raise ValueError(f"--radii must be non-negative numbers like 0,0.25,0.5 (got {args.radii!r})")
    return radii


def _checkpoint_sigma(train_cfg: dict):
    """The noise level a checkpoint was trained with: its recorded --sigma, else the default of
    its (noise-training) method; None for methods without one."""
    opts = train_cfg.get("method_options") or {}
    for v in (opts.get("sigma"), train_cfg.get("sigma")):
        if v is not None:
            return float(v)
    from .methods import METHODS
    option = getattr(METHODS.get(train_cfg.get("method")), "options", {}).get("sigma")
    return float(option.default) if option is not None else None


def main(argv=None) -> int:
    from .checkpoint import load_model
    from .io import atomic_write_json
    from .data import load_dataset
    from .errors import Interrupted, run_cli
    from .runtime import resolve_device

    partial = {}  # the progress file of the running evaluation, for the Ctrl-C message

    def run():
        args = build_parser().parse_args(argv)
        radii = _validate(args)
        device = resolve_device(args.device)
        model, meta = load_model(args.checkpoint, device)
        train_cfg = meta.get("config", {})
        dataset = args.dataset or train_cfg.get("dataset", "fashion_mnist")
        data_dir = args.data_dir or train_cfg.get("data_dir")
        eps = args.eps if args.eps is not None else train_cfg.get("eps", 0.1)
        norm = canonical_norm(args.norm or train_cfg.get("norm", "Linf"))
        spec = meta["model"]
        from .data.datasets import FOLDER_DATASETS
        # folder datasets are decoded at the resolution the model was built for
        extra = {"resolution": spec["image_size"]} if dataset in FOLDER_DATASETS and spec.get("image_size") else {}
        ds = load_dataset(dataset, args.split, data_dir, **extra)
        if args.test_size:
            ds = ds.subset(torch.arange(min(args.test_size, len(ds))))
        channels = ds.image_shape[0]
        if channels != spec["in_channels"] or ds.num_classes != spec["num_classes"]:
            raise ValueError(
                f"checkpoint expects {spec['in_channels']}-channel inputs and {spec['num_classes']} classes but {dataset} has "
                f"{channels} and {ds.num_classes}; pass the --dataset it was trained on"
            )
        suffix = {"quick": ".eval.json", "standard": ".eval-standard.json", "certify": ".eval-certify.json"}[args.suite]
        out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(suffix)
        partial_path = out.with_name(out.stem + ".partial.json")
        partial["path"] = partial_path
        show = sys.stderr.isatty()
        where = f"{dataset}/{args.split}"
        common = {"suite": args.suite, "checkpoint_sha256": meta.get("sha256"), "dataset": dataset, "split": args.split,
                  "n": len(ds), "seed": args.seed}

        if args.suite == "certify":
            sigma = args.sigma if args.sigma is not None else _checkpoint_sigma(train_cfg)
            if sigma is None:
                raise ValueError("--sigma is required for --suite certify: pass the noise level the model was trained "
                                 "with, e.g. --sigma 0.25")
            settings = {**common, "sigma": sigma, "n0": args.n0, "n_samples": args.n, "alpha": args.cert_alpha}
            pf = ProgressFile(partial_path, settings, args.resume)
            res = evaluate_certified(model, ds, sigma=sigma, n0=args.n0, n=args.n, alpha=args.cert_alpha,
                                     batch_size=args.batch_size, radii=radii, device=device, seed=args.seed,
                                     progress=show, progress_file=pf)
            res.update({"suite": "certify", "checkpoint": str(args.checkpoint), "dataset": dataset, "split": args.split})
            atomic_write_json(out, res)
            pf.remove()
            print(format_certify_table(res, where))
            print(f"-> {out}")
            return 0

        steps = args.steps or (20 if args.suite == "quick" else 100)
        attack_precision = "fp32"
        if args.attack_amp:
            attack_precision = str(AutocastModel(model, device).dtype).replace("torch.", "") + " autocast"
        settings = {**common, "eps": eps, "norm": norm, "steps": steps, "restarts": args.restarts,
                    "batch_size": args.batch_size, "attack_amp": args.attack_amp}
        if args.suite == "quick":
            settings["alpha"] = args.alpha
            pf = ProgressFile(partial_path, settings, args.resume)
            res = evaluate_robustness(model, ds, eps=eps, norm=norm, steps=steps, restarts=args.restarts,
                                      alpha=args.alpha, batch_size=args.batch_size, device=device, seed=args.seed,
                                      progress=show, attack_amp=args.attack_amp, progress_file=pf, per_sample=True)
            blackbox = None
        else:
            settings.update({"n_targets": args.n_targets, "n_queries": args.n_queries})
            pf = ProgressFile(partial_path, settings, args.resume)
            res = evaluate_standard(model, ds, eps=eps, norm=norm, steps=steps, restarts=args.restarts,
                                    n_targets=args.n_targets, n_queries=args.n_queries, batch_size=args.batch_size,
                                    device=device, seed=args.seed, progress=show, attack_amp=args.attack_amp,
                                    progress_file=pf)
            sq = res["attacks"][-1]
            blackbox = {"attack": sq["attack"], "run_on": sq["run_on"], "fooled": sq["fooled"]}
        res.update({"suite": args.suite, "attack_precision": attack_precision, "checkpoint": str(args.checkpoint),
                    "dataset": dataset, "split": args.split})
        robust_mask = res.pop("robust_mask")
        print(format_robust_table(res, where))

        if args.diag_size > 0 and eps > 0:
            k = min(args.diag_size, len(ds))
            x, y = first_samples(ds, k, device, args.batch_size)
            diag_steps = args.diag_steps or (steps if args.suite == "quick" else 20)
            diag = gradient_masking_checks(model, x, y, eps=eps, norm=norm, steps=diag_steps,
                                           batch_size=args.batch_size, seed=args.seed,
                                           square_queries=args.diag_queries, whitebox_robust=robust_mask[:k],
                                           blackbox=blackbox, attack_model=attack_view(model, device, args.attack_amp))
            print(format_diagnostics(diag, f"first {k} of {where}"))
        else:
            diag = {"skipped": "--diag-size 0" if args.diag_size == 0 else "eps is 0", "warnings": []}
            print(f"gradient-masking diagnostics skipped ({diag['skipped']}): the robust accuracy above is unchecked")
        res["diagnostics"] = diag
        atomic_write_json(out, res)
        pf.remove()
        print(f"-> {out}")
        return 0

    def run_saving_on_interrupt():
        try:
            return run()
        except KeyboardInterrupt:
            if "path" not in partial or not partial["path"].exists():
                raise  # nothing saved yet, or the result is already written: a plain "interrupted"
            raise Interrupted(signal.SIGINT, f"interrupted; the finished batches are in {partial['path']}: rerun the "
                                             f"same command with --resume to continue") from None

    return run_cli(run_saving_on_interrupt)


if __name__ == "__main__":
    sys.exit(main())
