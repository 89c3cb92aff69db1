"""Benchmarks and comparisons run from the package: ``python -m rrm_fast.bench {claims,steps,compare}``.

claims   robust accuracy against training time per method, and the speed-up claims (claims.py,
         rendered by claims_report.py)
steps    training-step times measured round-robin in one run, with their ratios (steps.py)
compare  every method at the same epoch budget (compare.py)
harness  what claims and compare share: budgets, method selection, run-or-reuse, the trainer's
         evaluation flags, the session's machine and load (harness.py)
robust_figures  how their tables name the attacks behind each figure, from the runs' reports,
         with the standard-suite column and the CE-vs-margin warnings (robust_figures.py)
timing   the one clock switch (wall / thread CPU time) and round-robin timing (timing.py)
machine  the machine description and load sampling (machine.py)
"""
