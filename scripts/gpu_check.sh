#!/usr/bin/env bash
# The device check (`make gpu-check`): build, test and benchmark rrm_fast on a GPU machine, all
# output in one results folder; without a GPU, a rehearsal with the GPU parts skipped.
# Options and parts: scripts/gpu_check.py (python3 scripts/gpu_check.py --help); docs/gpu_check.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
