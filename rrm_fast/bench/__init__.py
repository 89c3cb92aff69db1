"""Benchmarks and comparisons run from the package (python -m rrm_fast.bench.compare)."""
