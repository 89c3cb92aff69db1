"""python -m rrm_fast.bench {claims,steps,compare,transfer,attacks} [options]

  claims   train PGD-AT, Fast AT, Free AT and RRM (and peers) on one task; robust accuracy
           against wall-clock time, test-split figures, and the speed-up claims as ratios
  steps    median time of one training step per method, measured round-robin in one run
  compare  every method on one task at the same epoch budget (rrm_fast.bench.compare)
  transfer RRM variants, one lever per row, on the held-out training slice (rrm_fast.bench.transfer)
  attacks  this project's attacks next to torchattacks' on the same model and images (rrm_fast.bench.attacks)

`python -m rrm_fast.bench COMMAND --help` for each command's options.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"claims": "rrm_fast.bench.claims", "steps": "rrm_fast.bench.steps", "compare": "rrm_fast.bench.compare",
            "transfer": "rrm_fast.bench.transfer", "attacks": "rrm_fast.bench.attacks"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
