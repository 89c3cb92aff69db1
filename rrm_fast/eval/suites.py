"""The robust-accuracy suites, all through the one batch runner (rrm_fast.eval.runner).

* quick (``evaluate_robustness``): PGD-k with restarts on every sample of a batch.
* standard (``evaluate_standard``): APGD-CE -> APGD-T (top-k targets) -> Square, each on the
  samples every earlier attack failed on; robust = every attack failed (per-sample worst case).
"""
from __future__ import annotations

import time

import torch

from ..attacks import APGD, APGDT, PGD, Square, canonical_norm
from .batches import batch_generator, dataset_batches, n_batches, with_progress_bar
from .progress import ProgressFile
from .runner import Stage, aggregate, attack_batch, attack_view, batch_records


def run_suite(model, ds, make_stages, *, eps, norm, batch_size, device, seed, progress, channels_last, progress_file,
              desc) -> dict:
    """Attack ``ds`` batch by batch with ``make_stages(generator)`` (attacks seeded per batch);
    return the summed records (see runner.aggregate)."""
    names = [s.name for s in make_stages(None)]

    def evaluate_batch(start, x, y):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        stages = make_stages(batch_generator(device, seed, start))
        return attack_batch(model, stages, x, y, eps=eps, norm=norm)

    batches = with_progress_bar(dataset_batches(ds, batch_size, device), n_batches(len(ds), batch_size), desc, progress)
    return aggregate(batch_records(batches, evaluate_batch=evaluate_batch, progress_file=progress_file), names)


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

    def make_stages(gen):
        return [Stage(f"PGD-{steps}", PGD(amodel, eps=eps, alpha=alpha, steps=steps, norm=norm, restarts=restarts,
                                          early_stop=True, generator=gen), scope="batch")]

    t0 = time.perf_counter()
    tot = run_suite(model, ds, make_stages, eps=eps, norm=norm, batch_size=batch_size, device=device, seed=seed,
                    progress=progress, channels_last=channels_last, progress_file=progress_file,
                    desc=f"eval PGD-{steps}")
    n = tot["n"]
    res = {"n": n, "clean_acc": tot["clean"] / max(n, 1), "robust_acc": tot["robust"] / max(n, 1),
           "attack": f"PGD-{steps}", "restarts": restarts, "eps": eps, "norm": norm, "alpha": attack_alpha,
           "seconds": time.perf_counter() - t0}
    if per_sample:
        res["robust_mask"] = tot["mask"]
    return res


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


def attack_table(tot: dict, names) -> list[dict]:
    """Per-stage rows of a cascade: run on, fooled, robust accuracy after it, size, time."""
    n, robust_n, rows = tot["n"], tot["clean"], []
    for k in names:
        robust_n -= tot["fooled"][k]
        rows.append({"attack": k, "run_on": tot["run_on"][k], "fooled": tot["fooled"][k],
                     "robust_acc_after": robust_n / max(n, 1), "max_perturbation": tot["max_size"][k],
                     "seconds": tot["seconds"][k]})
    return rows


def evaluate_standard(model, ds, *, eps, norm="Linf", steps=100, restarts=1, n_targets=9, n_queries=5000,
                      batch_size=500, device="cpu", seed=0, progress=False, channels_last=False, attack_amp=False,
                      progress_file: ProgressFile | None = None) -> dict:
    """Per-sample worst case over APGD-CE, APGD-T and Square, each run on the samples still robust."""
    norm = canonical_norm(norm)
    if n_targets < 1:
        raise ValueError(f"--n-targets must be >= 1 (got {n_targets})")
    model.eval()
    amodel = attack_view(model, device, attack_amp)

    def make_stages(gen):
        return [Stage(name, attack) for name, attack in standard_attacks(
            amodel, ds.num_classes, eps=eps, norm=norm, steps=steps, restarts=restarts, n_targets=n_targets,
            n_queries=n_queries, generator=gen)]

    t0 = time.perf_counter()
    tot = run_suite(model, ds, make_stages, eps=eps, norm=norm, batch_size=batch_size, device=device, seed=seed,
                    progress=progress, channels_last=channels_last, progress_file=progress_file,
                    desc="eval standard")
    names = [s.name for s in make_stages(None)]
    table = attack_table(tot, names)
    n = tot["n"]
    return {"n": n, "clean_acc": tot["clean"] / max(n, 1), "robust_acc": table[-1]["robust_acc_after"], "attacks": table, "attack": " -> ".join(names), "restarts": restarts, "eps": eps,
            "norm": norm, "steps": steps, "n_targets": n_targets, "n_queries": n_queries,
            "seconds": time.perf_counter() - t0, "robust_mask": tot["mask"]}
