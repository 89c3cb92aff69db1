# The two commands of the README. Each does all the set-up it needs (idempotent).
PYTHON ?= python3

.PHONY: setup demo test bench claims

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

demo: setup
	$(PYTHON) -m rrm_fast.train --amp

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) -m pytest -q benchmarks --benchmark-only

claims: setup
	$(PYTHON) -m rrm_fast.bench claims --quick
