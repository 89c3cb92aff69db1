"""The trainer's robustness figures, the one place the trainer calls the evaluation library.

* the per-epoch check on the held-out slice of the TRAIN split (``--monitor-attacks``, default
  PGD-10 on CE and on the DLR margin, per-sample worst case): it drives early stopping and
  every held-out curve;
* the final figure on the test split (``--eval-attacks``, default APGD-CE-50 and APGD-T-50
  over 3 targets, per-sample worst case), never used for any choice;
* optionally the standard suite (APGD-CE -> APGD-T -> Square) on the first ``--standard-size``
  test samples, beside the final figure.

A CE-only figure is never the default: a model with soft logits fools CE-only PGD (see
docs/evaluation.md). Under torchrun each rank attacks samples rank::world_size and the counts
(per attack too) are summed, so the figures are those of one process on the whole set.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import load_dataset
from ..eval import evaluate_worst_case
from ..eval.suites import log_margin_warnings, margin_check
from ..io import atomic_write_json

log = logging.getLogger("rrm_fast.train")

SUMMED = ("run_on", "fooled")  # per-attack counts that add up over ranks


class RobustnessCheck:
    def __init__(self, cfg, ctx, device):
        self.cfg, self.ctx, self.device = cfg, ctx, device

    def heldout(self, model, ds) -> dict:
        return self.evaluate(model, ds, attacks=self.cfg.monitor_attacks, steps=self.cfg.monitor_steps, restarts=1,
                             seed=self.cfg.seed, progress=False)

    def test(self, model, ds, progress: bool) -> dict:
        return self.evaluate(model, ds, attacks=self.cfg.eval_attacks, steps=self.cfg.eval_steps,
                             restarts=self.cfg.eval_restarts, seed=0, progress=progress)

    def standard(self, model, ds, progress: bool) -> dict | None:
        """The standard suite on the first --standard-size samples of ``ds`` (None when 0)."""
        n = min(self.cfg.standard_size, len(ds))
        if n == 0:
            return None
        return self.evaluate(model, ds.subset(torch.arange(n)), attacks="standard", steps=None, restarts=1, seed=0,
                             progress=progress, n_queries=self.cfg.standard_queries)

    def evaluate(self, model, ds, *, attacks, steps, restarts, seed, progress, n_queries=5000) -> dict:
        kw = dict(eps=self.cfg.eps, norm=self.cfg.norm, attacks=attacks, steps=steps, restarts=restarts,
                  n_queries=n_queries, batch_size=500, device=self.device, seed=seed, progress=progress,
                  channels_last=self.cfg.channels_last)
        if self.ctx is None or not self.ctx.enabled:
            return evaluate_worst_case(model, ds, **kw)
        ctx = self.ctx
        res = evaluate_worst_case(model, ds.subset(torch.arange(ctx.rank, len(ds), ctx.world_size)),
                                  log_warnings=False, **kw)  # one rank's share: the summed check is logged
        res = summed_over_ranks(res, ctx.control_group)
        if ctx.is_main:
            log_margin_warnings(res)
        return res


def test_split(cfg, warn: bool = True):
    """The test split, cut to its first --test-size samples."""
    ds = load_dataset(cfg.dataset, "test", cfg.data_dir, resolution=cfg.resolution)
    if cfg.test_size and cfg.test_size > len(ds) and warn:
        log.warning("--test-size %d is more than %s's %d test images: evaluating on all of them", cfg.test_size,
                    cfg.dataset, len(ds))
    return ds.subset(torch.arange(min(cfg.test_size, len(ds)))) if cfg.test_size else ds


EVAL_KEYS = ("dataset", "data_dir", "resolution", "test_size", "eps", "norm", "eval_attacks", "eval_steps",
             "eval_restarts", "standard_size", "standard_queries", "channels_last")


def checkpoint_figures(cfg, checkpoint: str, device, progress: bool) -> dict:
    """Another model (the demo's teacher) measured exactly as ``cfg``'s run measures its own:
    same attacks, same test samples, same seeds. Kept beside the checkpoint, keyed by those
    settings and the weights' sha256, so a cached teacher is attacked once per setting."""
    own = own_figures(Path(checkpoint), cfg)
    if own is not None:  # the checkpoint's own run measured it with these very settings
        return own
    sha256 = json.loads(Path(checkpoint).with_suffix(".json").read_text()).get("sha256")  # the sidecar's
    key = json.dumps({**{k: getattr(cfg, k) for k in EVAL_KEYS}, "sha256": sha256}, sort_keys=True)
    kept = Path(checkpoint).with_name(f"test-eval-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json")
    if kept.exists():
        return json.loads(kept.read_text())
    model, _ = load_model(checkpoint, device)  # verifies the weights against that sha256
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check, ds = RobustnessCheck(cfg, None, device), test_split(cfg, warn=False)
    figures = {"test": check.test(model, ds, progress), "test_standard": check.standard(model, ds, progress)}
    atomic_write_json(kept, figures)
    return figures


def own_figures(checkpoint: Path, cfg) -> dict | None:
    """The figures of the run that wrote ``checkpoint`` (its report.json), if that run's
    evaluation settings (config.json) are ``cfg``'s."""
    report, config = checkpoint.with_name("report.json"), checkpoint.with_name("config.json")
    if checkpoint.name != "final.safetensors" or not (report.exists() and config.exists()):
        return None
    ran = json.loads(config.read_text())
    if any(ran.get(k) != getattr(cfg, k) for k in EVAL_KEYS):
        return None
    rep = json.loads(report.read_text())
    return {"test": rep["test"], "test_standard": rep.get("test_standard")}


def summed_over_ranks(res: dict, group) -> dict:
    """One rank's worst-case result turned into the whole set's: counts summed, accuracies and
    the CE-vs-margin check recomputed from the sums, times the mean over ranks."""
    rows = res["attacks"]
    n_local = res["n"]
    local = [n_local, round(res["clean_acc"] * n_local), round(res["robust_acc"] * n_local)]
    for r in rows:
        local += [r[k] for k in SUMMED] + [round(r.get("robust_acc_alone", 0.0) * n_local)]
    # one collective for counts and times (times come back as the mean over ranks)
    local += [res["seconds"]] + [r["seconds"] for r in rows]
    counts = torch.tensor(local, dtype=torch.float64)
    torch.distributed.all_reduce(counts, group=group)
    world = torch.distributed.get_world_size(group)
    seconds = counts[3 + 3 * len(rows):] / world
    counts = counts[:3 + 3 * len(rows)]
    values = [int(v) for v in counts.tolist()]
    n, clean, robust = values[:3]
    robust_after = clean
    for i, r in enumerate(rows):
        run_on, fooled, alone = values[3 + 3 * i: 6 + 3 * i]
        robust_after -= fooled
        r.update(run_on=run_on, fooled=fooled, robust_acc_after=robust_after / max(n, 1),
                 seconds=float(seconds[1 + i]))
        if "robust_acc_alone" in r:
            r["robust_acc_alone"] = alone / max(n, 1)
    check = margin_check(rows, n)
    res.update(n=n, clean_acc=clean / max(n, 1), robust_acc=robust / max(n, 1), seconds=float(seconds[0]),
               ce_vs_margin=check, warnings=[] if check is None or check["ok"] else [check["message"]])
    return res
