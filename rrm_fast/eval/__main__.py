"""``python -m rrm_fast.eval``: see rrm_fast.eval.cli."""
import sys

from .cli import main

sys.exit(main())
