"""The one batch runner: every suite and every diagnostic attacks batches through here.

A suite is a list of stages, each an attack with a scope that says which samples of a batch it
attacks:

* ``"batch"``:   every sample (misclassified ones too), as the quick suite always has;
* ``"correct"``: the clean-correct samples, so the attack's accuracy alone is known;
* ``"robust"``:  only the samples every earlier stage failed on (the standard suite's cascade).

A sample is robust when it is clean-correct and no stage fooled it (per-sample worst case).
Accuracy is always judged by the fp32 ``model``; the attacks may query another view of it
(``AutocastModel``). Every adversarial batch is checked against the threat model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .progress import mask_from, mask_str

SCOPES = ("batch", "correct", "robust")
PERTURBATION_SLACK = 1e-5  # float32 rounding of (x + delta) - x; anything beyond is a bug
STAGE_FIELDS = ("run_on", "fooled", "alone", "max_size", "seconds")


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


@dataclass(frozen=True)
class Stage:
    """One attack of a suite: ``attack(x, y) -> x_adv`` run on the samples its ``scope`` names.
    ``loss`` says what the attack maximises: "ce", "margin" (CW, DLR, targeted DLR; the
    CE-vs-margin check compares the two) or "score" (a black-box search)."""
    name: str
    attack: object
    scope: str = "robust"
    loss: str = "ce"

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown stage scope {self.scope!r}; choose one of {', '.join(SCOPES)}")


def _run_stage(model, stage: Stage, x, y, correct, robust, *, eps, norm, lo, hi) -> dict:
    """Attack the samples ``stage.scope`` names; clear ``robust`` where it fooled; return its counts."""
    if stage.scope == "batch":
        idx = torch.arange(x.shape[0], device=x.device)
    else:
        idx = (robust if stage.scope == "robust" else correct).nonzero().squeeze(1)
    row = {"run_on": int(idx.numel()), "fooled": 0, "max_size": 0.0, "seconds": 0.0}
    if stage.scope != "robust":
        row["alone"] = int(correct.sum())
    if idx.numel() == 0 or eps == 0:
        return row
    whole = stage.scope == "batch"
    xs, ys = (x, y) if whole else (x[idx], y[idx])
    t0 = time.perf_counter()
    x_adv = stage.attack(xs, ys)
    row["seconds"] = time.perf_counter() - t0
    row["max_size"] = check_threat_model(xs, x_adv, eps, norm, lo, hi, name=stage.name)
    with torch.no_grad():
        now_wrong = model(x_adv).argmax(1) != ys
    if stage.scope != "robust":
        row["alone"] = int((correct[idx] & ~now_wrong).sum())
    hit = idx[now_wrong]
    row["fooled"] = int(robust[hit].sum())
    robust[hit] = False
    return row


def attack_batch(model, stages, x, y, *, eps, norm, lo=0.0, hi=1.0) -> dict:
    """Run ``stages`` in order on one batch; the record a progress file stores for it."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    robust = correct.clone()
    rec = {"n": int(y.numel()), "clean": int(correct.sum()), **{k: {} for k in STAGE_FIELDS}}
    for stage in stages:
        row = _run_stage(model, stage, x, y, correct, robust, eps=eps, norm=norm, lo=lo, hi=hi)
        for k, v in row.items():
            rec[k][stage.name] = v
    rec["robust"] = int(robust.sum())
    rec["mask"] = mask_str(robust)
    return rec


def batch_records(batches, *, evaluate_batch, progress_file=None):
    """Yield each batch's record: reused from ``progress_file`` when it holds one, else computed
    by ``evaluate_batch(start, x, y)`` and saved there before the next batch starts."""
    for start, x, y in batches:
        rec = progress_file.get(start) if progress_file is not None else None
        if rec is None:
            rec = evaluate_batch(start, x, y)
            if progress_file is not None:
                progress_file.put(start, rec)
        yield rec


def aggregate(records, names) -> dict:
    """Sum batch records: n, clean, robust, per-stage totals (max for max_size), and the mask."""
    total = {"n": 0, "clean": 0, "robust": 0, **{k: {} for k in STAGE_FIELDS}}
    masks = []
    for rec in records:
        for k in ("n", "clean", "robust"):
            total[k] += rec[k]
        for field in STAGE_FIELDS:
            for name in names:
                if name in rec.get(field, {}):
                    v = rec[field][name]
                    if field == "max_size":
                        total[field][name] = max(total[field].get(name, 0.0), v)
                    else:
                        total[field][name] = total[field].get(name, 0) + v
        masks.append(mask_from(rec["mask"]))
    total["mask"] = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
    return total
