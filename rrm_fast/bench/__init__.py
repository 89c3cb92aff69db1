"""Benchmarks and comparisons run from the package: ``python -m rrm_fast.bench {claims,steps,compare}``.

claims   robust accuracy against wall-clock time per method, and the speed-up claims (claims.py)
steps    training-step times measured round-robin in one run, with their ratios (steps.py)
compare  every method at the same epoch budget (compare.py)
machine / timing: the machine description, load sampling and round-robin timing they share.
"""
