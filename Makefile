# The two commands of the README. Each does all the set-up it needs (idempotent).
PYTHON ?= python3

.PHONY: setup demo test bench claims gpu-check

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

# The device check on a GPU machine (no set-up: a bare machine has no internet); see docs/gpu_check.md.
# Options through GPU_CHECK_ARGS, e.g. make gpu-check GPU_CHECK_ARGS="--pack $$OUT".
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)
