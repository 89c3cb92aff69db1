"""The command line: ``python -m rrm_fast.eval CHECKPOINT [--suite quick|standard|certify]``."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attacks import canonical_norm
from ..errors import OneLineArgumentParser
from ..validation import eps_mistake, whole_number
from . import estimate
from .batches import first_samples
from .certify import evaluate_certified
from .diagnostics import format_diagnostics, gradient_masking_checks
from .outputs import check_result_path, is_progress, keep_earlier
from .progress import ProgressFile
from .report import format_certify_table, format_robust_table, write_results
from .runner import AutocastModel, attack_view
from .attack_sets import ATTACK_SETS, DEFAULT_ATTACKS, DEFAULT_STEPS, build_stages
from .suites import evaluate_robustness, evaluate_standard, evaluate_worst_case

SUITES = ("quick", "worst-case", "standard", "certify")
RESULT_SUFFIX = {"quick": ".eval.json", "worst-case": ".eval-worst-case.json", "standard": ".eval-standard.json",
                 "certify": ".eval-certify.json"}
DESCRIPTION = "Evaluation suites: robust accuracy you can trust, and certified accuracy of smoothed models."


def build_parser():
    p = OneLineArgumentParser(prog="python -m rrm_fast.eval", description=DESCRIPTION)
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by rrm_fast.train (with its .json sidecar)")
    p.add_argument("--suite", default="quick", choices=SUITES,
                   help="quick: PGD-k on CE (a quick check only); worst-case: the per-sample worst case over --attacks; "
                        "standard: APGD-CE -> APGD-T -> Square (worst case); certify: randomized smoothing")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS, choices=ATTACK_SETS,
                   help=f"worst-case: the named attack set (default {DEFAULT_ATTACKS}; see docs/evaluation.md)")
    p.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--eps", type=float, default=None, help="default: the checkpoint's training eps")
    p.add_argument("--norm", default=None, help="Linf or L2; default: the checkpoint's")
    p.add_argument("--steps", type=whole_number, default=None, help="PGD steps (quick, default 20), APGD iterations (standard, "
                   "default 100) or the attack set's steps (worst-case, its default)")
    p.add_argument("--restarts", type=whole_number, default=1)
    p.add_argument("--alpha", type=float, default=None, help="quick suite's PGD step; default 2.5*eps/steps")
    p.add_argument("--n-targets", type=whole_number, default=None, help="APGD-T target classes (top-k other classes); default "
                   "9 for standard, 3 for apgd-ce+t")
    p.add_argument("--n-queries", type=whole_number, default=5000, help="standard: Square attack queries per sample")
    p.add_argument("--batch-size", type=whole_number, default=500, help="attack batch; certify: noise samples per forward")
    p.add_argument("--test-size", type=whole_number, default=None, help="evaluate the first N samples only")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=whole_number, default=0)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="model and inputs channels-last, as the trainer runs them (2-3x faster forwards on CPU)")
    p.add_argument("--attack-amp", action="store_true", help="run the attacks' forward/backward under autocast "
                   "(bf16/fp16); accuracy is still judged in fp32")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its .partial.json")
    p.add_argument("--diag-size", type=whole_number, default=500, help="samples for the gradient-masking checks (0 skips them)")
    p.add_argument("--diag-steps", type=whole_number, default=None,
                   help="PGD steps k of the checks (k vs 2k, eps..4eps); default: --steps for quick, 20 for standard")
    p.add_argument("--diag-queries", type=whole_number, default=1000, help="quick suite: Square queries of the black-box check")
    p.add_argument("--sigma", type=float, default=None, help="certify: Gaussian noise level (default: the checkpoint's)")
    p.add_argument("--n0", type=whole_number, default=100, help="certify: selection samples")
    p.add_argument("--n", type=whole_number, default=100_000, help="certify: estimation samples (CPU: e.g. --n 1000 --test-size 100)")
    p.add_argument("--cert-alpha", type=float, default=0.001, help="certify: failure probability")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="certify: radii to report certified accuracy at")
    p.add_argument("--out", default=None, help="JSON results file (default: next to the checkpoint); an earlier result "
                                               "there is kept under a dated name")
    p.add_argument("--allow-long", action="store_true", help=f"run even when the time estimate printed at the start "
                   f"exceeds {estimate.LONG_RUN_HOURS:g} h (without it such a run is refused)")
    return p


def _validate(args):
    checks = [(args.steps is None or args.steps >= 1, f"--steps must be >= 1 (got {args.steps})"),
              (args.restarts >= 1, f"--restarts must be >= 1 (got {args.restarts})"),
              (args.batch_size >= 1, f"--batch-size must be >= 1 (got {args.batch_size})"),
              (args.test_size is None or args.test_size >= 1, f"--test-size must be >= 1 (got {args.test_size})"),
              (args.n_queries >= 1, f"--n-queries must be >= 1 (got {args.n_queries})"),
              (args.n_targets is None or args.n_targets >= 1, f"--n-targets must be >= 1 (got {args.n_targets})"),
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
    from ..methods import METHODS
    option = getattr(METHODS.get(train_cfg.get("method")), "options", {}).get("sigma")
    return float(option.default) if option is not None else None


@dataclass
class Job:
    """What one evaluation works on, resolved from the flags and the checkpoint."""
    model: torch.nn.Module
    meta: dict
    ds: object
    dataset: str
    split: str
    device: torch.device
    eps: float
    norm: str
    out: Path
    partial_path: Path

    @property
    def train_cfg(self) -> dict:
        return self.meta.get("config", {})

    @property
    def where(self) -> str:
        return f"{self.dataset}/{self.split}"

    def settings(self, args) -> dict:
        """The settings a progress record is reused under (anything that changes results)."""
        return {"suite": args.suite, "checkpoint_sha256": self.meta.get("sha256"), "dataset": self.dataset,
                "split": args.split, "n": len(self.ds), "seed": args.seed}


def _load_job(args) -> Job:
    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..data.datasets import FOLDER_DATASETS
    from ..runtime import resolve_device
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_cfg = meta.get("config", {})
    dataset = args.dataset or train_cfg.get("dataset", "fashion_mnist")
    spec = meta["model"]
    # folder datasets are decoded at the resolution the model was built for
    extra = {"resolution": spec["image_size"]} if dataset in FOLDER_DATASETS and spec.get("image_size") else {}
    ds = load_dataset(dataset, args.split, args.data_dir or train_cfg.get("data_dir"), **extra)
    if args.test_size and args.test_size > len(ds):
        logging.getLogger("rrm_fast.eval").warning("--test-size %d is more than the %d images of %s/%s: evaluating "
                                                   "all of them", args.test_size, len(ds), dataset, args.split)
    if args.test_size:
        ds = ds.subset(torch.arange(min(args.test_size, len(ds))))
    if ds.image_shape[0] != spec["in_channels"] or ds.num_classes != spec["num_classes"]:
        raise ValueError(
            f"checkpoint expects {spec['in_channels']}-channel inputs and {spec['num_classes']} classes but {dataset} has "
            f"{ds.image_shape[0]} and {ds.num_classes}; pass the --dataset it was trained on")
    out = result_path(args)
    eps = args.eps if args.eps is not None else train_cfg.get("eps", 0.1)
    norm = canonical_norm(args.norm or train_cfg.get("norm", "Linf"))
    mistake = eps_mistake(eps, norm, ds.image_shape)
    if mistake:
        logging.getLogger("rrm_fast.eval").warning(mistake)
    return Job(model, meta, ds, dataset, args.split, device, eps, norm, out, out.with_name(out.stem + ".partial.json"))


def result_path(args) -> Path:
    return Path(args.out) if args.out else Path(args.checkpoint).with_suffix(RESULT_SUFFIX[args.suite])


def check_outputs(args) -> None:
    """Before anything is loaded: the results file and its progress file may be written (rrm_fast.eval.outputs)."""
    if Path(args.checkpoint).is_dir():
        raise ValueError(f"checkpoint {args.checkpoint} is a directory; pass the .safetensors file a training run wrote "
                         "(RUN_DIR/final.safetensors)")
    out = result_path(args)
    check_result_path(out, Path(args.checkpoint), "--out" if args.out else "the results file")
    check_result_path(out.with_name(out.stem + ".partial.json"), Path(args.checkpoint), "its progress file",
                      belongs=is_progress)


def write_result(job: Job, res: dict) -> None:
    """The results file; an earlier result there is first kept under a dated name (and we say where)."""
    kept = keep_earlier(job.out)
    write_results(job.out, res)
    if kept is not None:
        print(f"the earlier result is kept as {kept}")


def suite_steps(args) -> int:
    """PGD steps or APGD iterations: --steps, else the suite's (quick 20, standard 100) or the attack set's."""
    return args.steps or {"quick": 20, "standard": 100}.get(args.suite) or DEFAULT_STEPS[args.attacks]


def _estimate(args, job: Job) -> None:
    """Say how long the suite will take (rrm_fast.eval.estimate); refuse beyond the limit unless --allow-long."""
    x, y = first_samples(job.ds, min(len(job.ds), estimate.PROBE_BATCH), job.device, args.batch_size)
    n = len(job.ds)
    if args.suite == "certify":
        forward, _ = estimate.seconds_per_sample(job.model, x, y)
        seconds = estimate.certify_seconds(n, args.n0, args.n, args.batch_size, forward)
        lower = "--n, --n0 or --test-size"
    else:
        per_sample = estimate.seconds_per_sample(attack_view(job.model, job.device, args.attack_amp), x, y)
        steps = suite_steps(args)
        attack_set = {"quick": "pgd-ce", "standard": "standard"}.get(args.suite, args.attacks)
        stages = build_stages(attack_set, job.model, job.ds.num_classes, eps=job.eps, norm=job.norm, steps=steps,
                              restarts=args.restarts, alpha=args.alpha, n_targets=args.n_targets,
                              n_queries=args.n_queries)
        seconds = estimate.attack_seconds([st.attack for st in stages], n, per_sample)
        if args.diag_size and job.eps:
            seconds += estimate.diagnostics_seconds(min(args.diag_size, n), args.diag_steps or (
                steps if args.suite == "quick" else 20), args.diag_queries if args.suite == "quick" else 0, per_sample)
        lower = "--steps, --restarts, --n-queries, --diag-size or --test-size"
    estimate.check(seconds, f"--suite {args.suite} on {n} images", lower, allow_long=args.allow_long,
                   upper_bound=args.suite != "certify")


def _run_certify(args, job: Job, radii) -> int:
    sigma = args.sigma if args.sigma is not None else _checkpoint_sigma(job.train_cfg)
    if sigma is None:
        raise ValueError("--sigma is required for --suite certify: pass the noise level the model was trained "
                         "with, e.g. --sigma 0.25")
    _estimate(args, job)
    settings = {**job.settings(args), "sigma": sigma, "n0": args.n0, "n_samples": args.n, "alpha": args.cert_alpha}
    pf = ProgressFile(job.partial_path, settings, args.resume)
    res = evaluate_certified(job.model, job.ds, sigma=sigma, n0=args.n0, n=args.n, alpha=args.cert_alpha,
                             batch_size=args.batch_size, radii=radii, device=job.device, seed=args.seed,
                             progress=sys.stderr.isatty(), progress_file=pf)
    res.update({"suite": "certify", "checkpoint": str(args.checkpoint), "dataset": job.dataset, "split": args.split})
    write_result(job, res)
    pf.remove()
    print(format_certify_table(res, job.where))
    print(f"-> {job.out}")
    return 0


def _run_attacks(args, job: Job, steps: int):
    """The quick or standard suite; returns (results, per-sample robust mask, black-box record)."""
    settings = {**job.settings(args), "eps": job.eps, "norm": job.norm, "steps": steps, "restarts": args.restarts,
                "batch_size": args.batch_size, "attack_amp": args.attack_amp, "channels_last": args.channels_last}
    common = dict(eps=job.eps, norm=job.norm, steps=steps, restarts=args.restarts, batch_size=args.batch_size,
                  device=job.device, seed=args.seed, progress=sys.stderr.isatty(), attack_amp=args.attack_amp,
                  channels_last=args.channels_last)
    if args.suite == "quick":
        settings["alpha"] = args.alpha
        pf = ProgressFile(job.partial_path, settings, args.resume)
        return evaluate_robustness(job.model, job.ds, alpha=args.alpha, progress_file=pf, per_sample=True, **common), pf
    settings.update({"n_targets": args.n_targets, "n_queries": args.n_queries})
    if args.suite == "worst-case":
        settings["attacks"] = args.attacks
    pf = ProgressFile(job.partial_path, settings, args.resume)
    common.update(n_targets=args.n_targets, n_queries=args.n_queries, progress_file=pf)
    if args.suite == "standard":
        return evaluate_standard(job.model, job.ds, **{**common, "n_targets": args.n_targets or 9}), pf
    return evaluate_worst_case(job.model, job.ds, attacks=args.attacks, per_sample=True, **common), pf


def _suite_blackbox(res: dict):
    """The suite's own black-box stage (Square after the white-box attacks), if it ran one."""
    rows = [r for r in res.get("attacks", []) if r.get("loss") == "score"]
    return {"attack": rows[-1]["attack"], "run_on": rows[-1]["run_on"], "fooled": rows[-1]["fooled"]} if rows else None


def _diagnose(args, job: Job, steps: int, robust_mask, blackbox) -> dict:
    if args.diag_size == 0 or job.eps == 0:
        diag = {"skipped": "--diag-size 0" if args.diag_size == 0 else "eps is 0", "warnings": []}
        print(f"gradient-masking diagnostics skipped ({diag['skipped']}): the robust accuracy above is unchecked")
        return diag
    k = min(args.diag_size, len(job.ds))
    x, y = first_samples(job.ds, k, job.device, args.batch_size)
    diag_steps = args.diag_steps or (steps if args.suite == "quick" else 20)  # the cascade's APGD steps are too many
    diag = gradient_masking_checks(job.model, x, y, eps=job.eps, norm=job.norm, steps=diag_steps,
                                   batch_size=args.batch_size, seed=args.seed, square_queries=args.diag_queries,
                                   whitebox_robust=robust_mask[:k], blackbox=blackbox,
                                   attack_model=attack_view(job.model, job.device, args.attack_amp))
    print(format_diagnostics(diag, f"first {k} of {job.where}"))
    return diag


def _run_robust(args, job: Job) -> int:
    _estimate(args, job)
    steps = suite_steps(args)
    attack_precision = "fp32"
    if args.attack_amp:
        attack_precision = str(AutocastModel(job.model, job.device).dtype).replace("torch.", "") + " autocast"
    res, pf = _run_attacks(args, job, steps)
    res.update({"suite": args.suite, "attack_precision": attack_precision, "checkpoint": str(args.checkpoint),
                "dataset": job.dataset, "split": args.split})
    robust_mask = res.pop("robust_mask")
    print(format_robust_table(res, job.where))
    res["diagnostics"] = _diagnose(args, job, steps, robust_mask, _suite_blackbox(res))
    write_result(job, res)
    pf.remove()
    print(f"-> {job.out}")
    return 0


def main(argv=None) -> int:
    from ..errors import Interrupted, run_cli
    # the suites log their warnings (for library callers); here the printed table carries them
    suite_log = logging.getLogger("rrm_fast.eval")
    if not suite_log.handlers:
        suite_log.addHandler(logging.NullHandler())
    partial = {}  # the progress file of the running evaluation, for the Ctrl-C message

    def run():
        args = build_parser().parse_args(argv)
        radii = _validate(args)
        check_outputs(args)
        job = _load_job(args)
        partial["path"] = job.partial_path
        return _run_certify(args, job, radii) if args.suite == "certify" else _run_robust(args, job)

    def run_saving_on_interrupt():
        try:
            return run()
        except KeyboardInterrupt:
            if "path" not in partial or not partial["path"].exists():
                raise  # nothing saved yet, or the result is already written: a plain "interrupted"
            raise Interrupted(signal.SIGINT, f"interrupted; the finished batches are in {partial['path']}: rerun the "
                                             f"same command with --resume to continue") from None

    return run_cli(run_saving_on_interrupt)
