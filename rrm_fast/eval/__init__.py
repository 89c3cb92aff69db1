"""Evaluation: robust accuracy you can trust, and certified accuracy of smoothed models.

    python -m rrm_fast.eval RUN_DIR/final.safetensors                    # --suite quick: PGD-20
    python -m rrm_fast.eval RUN_DIR/final.safetensors --suite standard   # APGD-CE -> APGD-T -> Square
    python -m rrm_fast.eval RUN_DIR/final.safetensors --suite certify --sigma 0.25 --n 1000 --test-size 100

* quick: clean and PGD-k accuracy (random start, restarts; a sample is robust only if every
  restart fails). The trainer's final figure comes from ``evaluate_robustness`` with the same
  defaults and seed, so this command reproduces it.
* standard: like AutoAttack's standard version (without FAB-T): APGD-CE, then targeted
  APGD-DLR over the top-9 other classes, then the Square attack (5000 queries), each run only on
  the samples every earlier attack failed on; robust = every attack failed (worst case).
* certify: Cohen et al.'s CERTIFY for the Gaussian-smoothed model (see rrm_fast.smoothing).

quick and standard also run the gradient-masking diagnostics on the first --diag-size samples
and print/record every violated check as a warning. Attacks run in fp32 unless --attack-amp.
Long runs write per-batch progress next to the output (``*.partial.json``, atomically) and
``--resume`` skips the batches already done. The test split is never used to choose a
checkpoint or a hyper-parameter.

The package reads in the order data flows:

    batches.py      samples in order, in seeded batches
    runner.py       the one batch runner: attack stages per batch, threat-model check, totals
    progress.py     the per-batch progress file (resume)
    attack_sets.py  named attack sets ("pgd-ce", "pgd-ce+dlr", ..., "standard") as runner stages
    suites.py       the worst case over an attack set; standard; quick (PGD-k on CE)
    certify.py      randomized-smoothing certification
    diagnostics.py  gradient-masking checks
    report.py       printed tables and the JSON results file
    cli.py          the command line (``__main__.py`` runs it)
"""
from .attack_sets import ATTACK_SETS, DEFAULT_ATTACKS, build_stages
from .batches import batch_seed, first_samples
from .certify import evaluate_certified
from .cli import main
from .diagnostics import ce_vs_margin, format_diagnostics, gradient_masking_checks, large_eps
from .progress import ProgressFile
from .runner import AutocastModel, Stage, attack_batch, attack_view, check_threat_model
from .suites import evaluate_robustness, evaluate_standard, evaluate_worst_case

__all__ = ["ATTACK_SETS", "DEFAULT_ATTACKS", "AutocastModel", "ProgressFile", "Stage", "attack_batch", "attack_view",
           "batch_seed", "build_stages", "ce_vs_margin", "check_threat_model", "evaluate_certified", "evaluate_robustness",
           "evaluate_standard", "evaluate_worst_case", "first_samples", "format_diagnostics", "gradient_masking_checks",
           "large_eps", "main"]
