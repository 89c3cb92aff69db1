"""python -m rrm_fast.train: see rrm_fast/train/cli.py."""
import sys

from .cli import main

sys.exit(main())
